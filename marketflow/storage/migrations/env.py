"""Alembic environment for marketflow's schema, run through `marketflow.storage.migrate`.

The caller (`marketflow db upgrade`, or the daemon initialising an empty database) hands over an open
SQLAlchemy connection in `config.attributes["connection"]`; there is no alembic.ini and no offline mode.
On PostgreSQL a transaction-scoped advisory lock serialises concurrent upgrades (two daemons starting on
one empty database): the second waits, then finds the schema current and does nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from marketflow.storage.schema import metadata

MIGRATION_LOCK_KEY = 0x6D666C6F77  # "mflow": any constant shared by every marketflow process

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "marketflow migrations run through `marketflow db upgrade` (marketflow.storage.migrate), "
        "which passes a connection; the alembic command line is not configured for them"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.run_migrations()
