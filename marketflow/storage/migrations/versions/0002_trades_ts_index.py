"""Index trades by time alone, so retention pruning finds the oldest rows without a table scan.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Times only grow, so this index is appended to at its right edge like the identity key: cheap to keep.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("trades_ts", "trades", ["ts"])


def downgrade() -> None:
    op.drop_index("trades_ts", table_name="trades")
