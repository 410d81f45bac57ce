"""Storage: one schema, SQLite (embedded default) and PostgreSQL engines, the writer actor."""

from __future__ import annotations

from marketflow.config import Config
from marketflow.model import Trade
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Subscription
from marketflow.storage.sqlite import SqliteTradeStore, StorageError
from marketflow.storage.writer import StorageWriter, TradeStore


def open_store(url: str) -> TradeStore:
    """The store for a storage URL (not yet connected: the writer calls `open()`)."""
    if url.startswith("sqlite:///"):
        return SqliteTradeStore(url)
    if url.startswith(("postgresql://", "postgresql+asyncpg://")):
        raise StorageError("PostgreSQL storage is not available in this version yet; use a sqlite:/// URL")
    raise StorageError(f"unsupported storage URL {url!r}: expected sqlite:///PATH or postgresql://...")


def make_writer(config: Config, store: TradeStore, subscription: Subscription[Trade]) -> StorageWriter:
    """The storage writer actor for a configuration (a fresh one for every supervisor restart)."""
    s = config.storage
    return StorageWriter(
        store,
        subscription,
        batch_max=s.batch_max,
        flush_interval_s=s.flush_interval_s,
        backoff=Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s),
    )
