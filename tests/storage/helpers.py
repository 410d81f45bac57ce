"""Shared pieces of the storage tests: trades, a store with an off switch, real-time waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from decimal import Decimal

import trio

from marketflow.model import Trade
from marketflow.storage.writer import StorageError, TradeStore

BASE_TS = 1_700_000_000_000_000


def trade(i: int, *, symbol: str = "BTC-USDT", price: str = "65114.20", ts: int | None = None) -> Trade:
    return Trade(
        "bybit",
        symbol,
        str(2**60 + i),
        Decimal(price),
        Decimal("0.001000"),
        "buy" if i % 2 else "sell",
        ts if ts is not None else BASE_TS + i * 1000,
        BASE_TS + 500 + i * 1000,
    )


def trades(start: int, stop: int, **kwargs: object) -> list[Trade]:
    return [trade(i, **kwargs) for i in range(start, stop)]  # type: ignore[arg-type]


def index_of(t: Trade) -> int:
    return int(t.id) - 2**60


class SwitchableStore:
    """A real store behind a switch: while `down`, every call fails as an unreachable database would.

    Records the order of committed batches (`written`) and of writes and prunes (`events`).
    """

    def __init__(self, inner: TradeStore, *, down: bool = False) -> None:
        self.inner = inner
        self.down = down
        self.engine_name = inner.engine_name
        self.written: list[list[Trade]] = []
        self.events: list[str] = []
        self.failures = 0

    @property
    def display_url(self) -> str:
        return self.inner.display_url

    def _check(self) -> None:
        if self.down:
            self.failures += 1
            raise StorageError("injected: connection refused")

    async def open(self) -> None:
        self._check()
        await self.inner.open()

    async def write_trades(self, batch: Sequence[Trade]) -> int:
        self._check()
        inserted = await self.inner.write_trades(batch)
        self.written.append(list(batch))
        self.events.append("write")
        return inserted

    async def prune_trades(self, before_us: int, limit: int) -> int:
        self._check()
        deleted = await self.inner.prune_trades(before_us, limit)
        self.events.append("prune")
        return deleted

    async def close(self) -> None:
        await self.inner.close()

    def written_indexes(self) -> list[int]:
        return [index_of(t) for batch in self.written for t in batch]


async def wait_real(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait in real time (works under a virtual clock too) for a worker thread's or a server's effect."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await trio.to_thread.run_sync(time.sleep, 0.005)
