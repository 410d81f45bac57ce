"""Storage: one schema, SQLite (embedded default) and PostgreSQL engines, the writer actor and its spool."""

from __future__ import annotations

import os

from marketflow.config import Config
from marketflow.model import Trade
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Subscription
from marketflow.storage.migrate import display_url
from marketflow.storage.spool import RecordSpools, Spool
from marketflow.storage.sqlite import SqliteTradeStore
from marketflow.storage.store import SchemaVersionError, StorageError, TradeStore
from marketflow.storage.writer import StorageWriter

__all__ = [
    "SchemaVersionError",
    "StorageError",
    "StorageWriter",
    "TradeStore",
    "make_writer",
    "open_store",
    "record_spills",
    "spool_directory",
]


def open_store(url: str) -> TradeStore:
    """The store for a storage URL (not yet connected: the writer calls `open()`)."""
    if url.startswith("sqlite:///"):
        return SqliteTradeStore(url)
    if url.startswith(("postgresql://", "postgresql+asyncpg://")):
        from marketflow.storage.postgres import PostgresTradeStore  # asyncpg only when it is used

        return PostgresTradeStore(url)
    raise StorageError(
        f"unsupported storage URL {display_url(url)!r}: expected sqlite:///PATH or postgresql://..."
    )


def spool_directory(config: Config) -> str:
    """Where the writer spools trades the database cannot take: `<daemon.state_dir>/spool/trades`."""
    return os.path.join(config.daemon.state_dir, "spool", "trades")


def record_spills(config: Config) -> RecordSpools:
    """Where the record sinks spill what the database cannot take yet: `<state_dir>/spool/records/<name>`."""
    return RecordSpools(os.path.join(config.daemon.state_dir, "spool", "records"))


def make_writer(config: Config, store: TradeStore, subscription: Subscription[Trade]) -> StorageWriter:
    """The storage writer actor for a configuration (a fresh one for every supervisor restart)."""
    s = config.storage
    return StorageWriter(
        store,
        subscription,
        batch_max=s.batch_max,
        flush_interval_s=s.flush_interval_s,
        backoff=Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s),
        spool=Spool(spool_directory(config)),
        buffer_max=s.buffer_max,
        # Half the shutdown deadline for the last database attempt leaves the rest for the spool.
        shutdown_write_s=config.daemon.shutdown_timeout_s / 2,
        retention_days=s.retention_days,
    )
