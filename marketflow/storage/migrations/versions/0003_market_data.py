"""Quotes, derivatives data and liquidations (SPEC §12): tables `derivatives`, `liquidations`, `quotes`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

`derivatives` is sampled (one row per symbol per sample interval with a change), keyed by time;
`liquidations` holds every event once, keyed by its identity; `quotes` every best bid/ask change. Each
has an index on `ts` alone for retention. Types are spelled out as in 0001.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _decimal() -> sa.types.TypeEngine[Any]:
    return sa.Text().with_variant(postgresql.NUMERIC(), "postgresql")


def _instant() -> sa.types.TypeEngine[Any]:
    return sa.BigInteger().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "derivatives",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts", _instant(), nullable=False),
        sa.Column("mark_price", _decimal(), nullable=True),
        sa.Column("index_price", _decimal(), nullable=True),
        sa.Column("funding_rate", _decimal(), nullable=True),
        sa.Column("next_funding_ts", _instant(), nullable=True),
        sa.Column("open_interest", _decimal(), nullable=True),
        sa.Column("open_interest_value", _decimal(), nullable=True),
        sa.UniqueConstraint("exchange", "symbol", "ts", name="derivatives_identity"),
    )
    op.create_index("derivatives_ts", "derivatives", ["ts"])
    op.create_table(
        "liquidations",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts", _instant(), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("price", _decimal(), nullable=False),
        sa.Column("amount", _decimal(), nullable=False),
        sa.Column("recv_ts", _instant(), nullable=False),
        sa.UniqueConstraint("exchange", "symbol", "ts", "id", name="liquidations_identity"),
    )
    op.create_index("liquidations_ts", "liquidations", ["ts"])
    op.create_table(
        "quotes",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts", _instant(), nullable=False),
        sa.Column("bid", _decimal(), nullable=True),
        sa.Column("bid_size", _decimal(), nullable=True),
        sa.Column("ask", _decimal(), nullable=True),
        sa.Column("ask_size", _decimal(), nullable=True),
    )
    op.create_index("quotes_symbol_ts", "quotes", ["exchange", "symbol", "ts"])
    op.create_index("quotes_ts", "quotes", ["ts"])


def downgrade() -> None:
    op.drop_table("quotes")
    op.drop_table("liquidations")
    op.drop_table("derivatives")
