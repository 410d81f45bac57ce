"""A small actor that saves records handed to it synchronously (candles from the analytics engine).

`submit()` never waits: records queue in memory (bounded; past the bound the oldest are dropped and
counted) and are written in batches every `flush_interval_s`. A failed write keeps the batch for the
next round, so a database hiccup loses nothing unless it outlasts the bound.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
import trio

log = logging.getLogger("marketflow.storage")

T = TypeVar("T")


@attrs.frozen
class SinkStatistics:
    name: str
    queued: int
    written: int
    dropped: int
    errors: int
    last_error: str | None


class RecordSink(Generic[T]):
    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], Awaitable[None]] | None,
        *,
        capacity: int = 100_000,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.name = name
        self._write = write
        self._queue: deque[T] = deque()
        self._capacity = capacity
        self._flush_interval_s = flush_interval_s
        self._wake = trio.Event()
        self._scope = trio.CancelScope()
        self._written = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None

    def submit(self, records: list[T]) -> None:
        if self._write is None:
            return
        self._queue.extend(records)
        overflow = len(self._queue) - self._capacity
        for _ in range(max(0, overflow)):
            self._queue.popleft()
        self._dropped += max(0, overflow)
        self._wake.set()

    def request_stop(self) -> None:
        self._scope.cancel()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(
            self.name, len(self._queue), self._written, self._dropped, self._errors, self._last_error
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            with self._scope:
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    await trio.sleep(self._flush_interval_s)
                    await self._flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._flush()

    async def _flush(self) -> None:
        if not self._queue or self._write is None:
            return
        batch = list(self._queue)
        self._queue.clear()
        try:
            await self._write(batch)
        except Exception as exc:  # put the batch back in front; the next round retries it
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._queue.extendleft(reversed(batch))
            self.submit([])
            self._wake.set()
            log.error("records not saved", extra={"sink": self.name, "error": self._last_error})
            return
        self._written += len(batch)
