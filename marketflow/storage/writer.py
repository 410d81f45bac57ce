"""The storage writer actor: trade batches from the bus → the database, in bounded transactions.

Rows are committed when `batch_max` are pending or `flush_interval_s` after the oldest pending row arrived,
whichever comes first — so a SIGKILL loses at most one flush interval. When the database fails the writer
keeps the rows and retries with backoff; it stops reading meanwhile, so the bus (BLOCK policy) pushes back
on the feeds instead of dropping anything. When the bus closes it flushes everything and returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from marketflow.model import Trade, now_us
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Subscription, receive_batches

log = logging.getLogger("marketflow.storage")


class TradeStore(Protocol):
    engine_name: str

    @property
    def display_url(self) -> str: ...

    async def open(self) -> None: ...

    async def write_trades(self, batch: Sequence[Trade]) -> int: ...

    async def close(self) -> None: ...


@attrs.frozen
class WriterStatistics:
    name: str
    engine: str
    url: str
    state: str
    rows_received: int
    rows_written: int
    duplicates: int
    batches: int
    errors: int
    last_error: str | None
    buffered: int
    lag_ms: float | None
    last_batch_ms: float | None


class StorageWriter:
    """Owns one store; batches trades from `subscription` into it."""

    def __init__(
        self,
        store: TradeStore,
        subscription: Subscription[Trade],
        *,
        batch_max: int,
        flush_interval_s: float,
        backoff: Backoff | None = None,
        name: str = "storage",
    ) -> None:
        self.name = name
        self._store = store
        self._subscription = subscription
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._pending: list[Trade] = []
        self._state = "starting"
        self._rows_received = 0
        self._rows_written = 0
        self._duplicates = 0
        self._batches = 0
        self._errors = 0
        self._last_error: str | None = None
        self._lag_ms: float | None = None
        self._last_batch_ms: float | None = None

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            name=self.name,
            engine=self._store.engine_name,
            url=self._store.display_url,
            state=self._state,
            rows_received=self._rows_received,
            rows_written=self._rows_written,
            duplicates=self._duplicates,
            batches=self._batches,
            errors=self._errors,
            last_error=self._last_error,
            buffered=len(self._pending),
            lag_ms=self._lag_ms,
            last_batch_ms=self._last_batch_ms,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._store.open()
        receiver = self._subscription.receiver()
        self._state = "running"
        task_status.started()
        try:
            with receiver:
                await self._loop(receiver)
        finally:
            with trio.CancelScope(shield=True):
                await self._store.close()
            self._state = "stopped"

    async def _loop(self, receiver: trio.MemoryReceiveChannel[list[Trade]]) -> None:
        pending = self._pending
        deadline = float("inf")
        while True:
            ended = False
            with trio.move_on_at(deadline):
                try:
                    batches = await receive_batches(receiver)
                except trio.EndOfChannel:
                    ended = True
                else:
                    if not pending:
                        deadline = trio.current_time() + self._flush_interval_s
                    for batch in batches:
                        pending.extend(batch)
                        self._rows_received += len(batch)
            if ended:
                await self._flush_all()
                return
            if len(pending) >= self._batch_max or trio.current_time() >= deadline:
                await self._flush_all()
                deadline = float("inf")

    async def _flush_all(self) -> None:
        pending = self._pending
        while pending:
            chunk = pending[: self._batch_max]
            await self._write_with_retry(chunk)
            del pending[: len(chunk)]

    async def _write_with_retry(self, chunk: list[Trade]) -> None:
        while True:
            started = trio.current_time()
            try:
                inserted = await self._store.write_trades(chunk)
            except Exception as exc:  # any driver failure: keep the rows, back off, try again
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._state = "retrying"
                delay = self._backoff.next_delay()
                log.error(
                    "storage write failed; retrying",
                    extra={"url": self._store.display_url, "error": self._last_error, "retry_in_s": delay},
                )
                await trio.sleep(delay)
                continue
            self._backoff.reset()
            self._state = "running"
            self._batches += 1
            self._rows_written += inserted
            self._duplicates += len(chunk) - inserted
            self._last_batch_ms = (trio.current_time() - started) * 1000
            self._lag_ms = (now_us() - chunk[-1].recv_ts) / 1000
            return
