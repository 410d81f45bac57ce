"""Baseline: trades, candles, book_snapshots, gaps (the schema marketflow 0.1 created without migrations).

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Types are spelled out here, not imported from schema.py, so this revision stays what it was when the
schema moves on: exact decimals are NUMERIC on PostgreSQL and TEXT on SQLite; instants are timestamptz on
PostgreSQL and integer microseconds on SQLite.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _decimal() -> sa.types.TypeEngine[Any]:
    return sa.Text().with_variant(postgresql.NUMERIC(), "postgresql")


def _instant() -> sa.types.TypeEngine[Any]:
    return sa.BigInteger().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "trades",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts", _instant(), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("price", _decimal(), nullable=False),
        sa.Column("amount", _decimal(), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("recv_ts", _instant(), nullable=False),
        sa.UniqueConstraint("exchange", "symbol", "ts", "id", name="trades_identity"),
    )
    op.create_table(
        "candles",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("start", _instant(), nullable=False),
        *(
            sa.Column(name, _decimal(), nullable=False)
            for name in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume")
        ),
        sa.Column("trades", sa.Integer(), nullable=False),
        sa.Column("vwap", _decimal(), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "symbol", "interval", "start", name="candles_pk"),
    )
    op.create_table(
        "book_snapshots",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts", _instant(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("bids", sa.Text(), nullable=False),
        sa.Column("asks", sa.Text(), nullable=False),
        sa.UniqueConstraint("exchange", "symbol", "ts", name="book_snapshots_identity"),
    )
    op.create_table(
        "gaps",
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("start", _instant(), nullable=False),
        sa.Column("end", _instant(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recovered", sa.Integer(), nullable=False),
        sa.UniqueConstraint("exchange", "symbol", "channel", "start", name="gaps_identity"),
    )


def downgrade() -> None:
    for table in ("gaps", "book_snapshots", "candles", "trades"):
        op.drop_table(table)
