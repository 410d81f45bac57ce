"""The store contract: what the storage writer and the NATS store role write trades through, and the errors
a store raises.

SQLite and PostgreSQL implement `TradeStore` (`sqlite.py`, `postgres.py`), as does the NATS collect role's
JetStream publisher (`nats/collect.py`); the writer owns one and never names the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from marketflow.model import Trade


class StorageError(Exception):
    """The database refused or failed an operation; the message names the database and the cause."""


class SchemaVersionError(StorageError):
    """The database's schema is not the one this marketflow writes; the message says what to do."""


class TradeStore(Protocol):
    engine_name: str

    @property
    def display_url(self) -> str: ...

    async def open(self) -> None: ...

    async def write_trades(self, batch: Sequence[Trade]) -> int: ...

    async def prune_trades(self, before_us: int, limit: int) -> int: ...

    async def close(self) -> None: ...
