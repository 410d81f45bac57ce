"""Storage: one schema, SQLite (embedded default) and PostgreSQL engines, the writer actor."""

from __future__ import annotations

from marketflow.storage.sqlite import SqliteTradeStore, StorageError
from marketflow.storage.writer import TradeStore


def open_store(url: str) -> TradeStore:
    """The store for a storage URL (not yet connected: the writer calls `open()`)."""
    if url.startswith("sqlite:///"):
        return SqliteTradeStore(url)
    if url.startswith(("postgresql://", "postgresql+asyncpg://")):
        raise StorageError("PostgreSQL storage is not available in this version yet; use a sqlite:/// URL")
    raise StorageError(f"unsupported storage URL {url!r}: expected sqlite:///PATH or postgresql://...")
