"""A small actor that saves records handed to it synchronously (candles, gap ledger records).

`submit()` never waits: records queue in memory (bounded; past the bound the oldest are dropped and
counted) and are written in batches every `flush_interval_s`. With a `key`, a queued record is replaced by
a newer one with the same key (the store upserts by it anyway). A failed write keeps the batch for the next
round — behind nothing, and never over a newer version of a record — so a database hiccup loses nothing
unless it outlasts the bound.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import attrs
import trio

log = logging.getLogger("marketflow.sink")

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
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        sequence = itertools.count()
        self._key: Callable[[T], Hashable] = key if key is not None else (lambda _: next(sequence))
        self._queue: dict[Hashable, T] = {}
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
        for record in records:
            self._queue[self._key(record)] = record
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        overflow = len(self._queue) - self._capacity
        for _ in range(max(0, overflow)):
            del self._queue[next(iter(self._queue))]
        self._dropped += max(0, overflow)

    @property
    def queued(self) -> int:
        return len(self._queue)

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
        pending, self._queue = self._queue, {}
        try:
            await self._write(list(pending.values()))
        except BaseException as exc:  # put the batch back in front; the next round retries it
            pending.update(self._queue)  # what arrived meanwhile is newer: it wins
            self._queue = pending
            self._trim()
            if not isinstance(exc, Exception):
                raise  # cancelled mid-write (a stop): the final flush writes the batch again
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._wake.set()
            log.error("records not saved", extra={"sink": self.name, "error": self._last_error})
            return
        self._written += len(pending)
