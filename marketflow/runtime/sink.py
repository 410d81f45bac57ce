"""A small actor that saves records handed to it synchronously (candles, gap ledger records).

`submit()` never waits: records queue in memory (bounded; past the bound the oldest are dropped and
counted) and are written in batches every `flush_interval_s`. With a `key`, a queued record is replaced by
a newer one with the same key (the store upserts by it anyway). A failed write keeps the batch for the next
round — behind nothing, and never over a newer version of a record — so a database hiccup loses nothing
unless it outlasts the bound.

The queue and its counters are a `RecordQueue`, apart from the `RecordSink` actor that drains it: a
supervisor restarts the sink as a fresh actor over the same queue, so a restart loses nothing queued.
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


class RecordQueue(Generic[T]):
    """Records waiting to be saved, with the counters: what outlives any one `RecordSink`.

    `accept=False` (nowhere to save them) makes `submit()` discard everything.
    """

    def __init__(
        self,
        name: str,
        *,
        capacity: int = 100_000,
        key: Callable[[T], Hashable] | None = None,
        accept: bool = True,
    ) -> None:
        self.name = name
        self.accept = accept
        sequence = itertools.count()
        self._key: Callable[[T], Hashable] = key if key is not None else (lambda _: next(sequence))
        self._queue: dict[Hashable, T] = {}
        self._capacity = capacity
        self._wake = trio.Event()
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None

    def submit(self, records: list[T]) -> None:
        if not self.accept:
            return
        for record in records:
            self._queue[self._key(record)] = record
        self._trim()
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(
            self.name, len(self._queue), self.written, self.dropped, self.errors, self.last_error
        )

    async def wait_submitted(self) -> None:
        """Until something was submitted since the last call (at once if it already was)."""
        await self._wake.wait()
        self._wake = trio.Event()

    def take(self) -> dict[Hashable, T]:
        """Everything queued, in order; the queue is empty after."""
        pending, self._queue = self._queue, {}
        return pending

    def put_back(self, pending: dict[Hashable, T]) -> None:
        """Requeue a batch that was not saved, in front; what arrived meanwhile is newer and wins."""
        pending.update(self._queue)
        self._queue = pending
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        overflow = len(self._queue) - self._capacity
        for _ in range(max(0, overflow)):
            del self._queue[next(iter(self._queue))]
        self.dropped += max(0, overflow)


class RecordSink(Generic[T]):
    """Drains a `RecordQueue` through `write`; an actor (a fresh one per start, over the same queue)."""

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], Awaitable[None]] | None,
        *,
        queue: RecordQueue[T] | None = None,
        capacity: int = 100_000,
        flush_interval_s: float = 1.0,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self.queue: RecordQueue[T] = (
            queue
            if queue is not None
            else RecordQueue(name, capacity=capacity, key=key, accept=write is not None)
        )
        self._flush_interval_s = flush_interval_s
        self._scope = trio.CancelScope()

    def submit(self, records: list[T]) -> None:
        self.queue.submit(records)

    @property
    def queued(self) -> int:
        return self.queue.queued

    def request_stop(self) -> None:
        self._scope.cancel()

    def statistics(self) -> SinkStatistics:
        return self.queue.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            with self._scope:
                while True:
                    await self.queue.wait_submitted()
                    await trio.sleep(self._flush_interval_s)
                    await self._flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._flush()

    async def _flush(self) -> None:
        queue = self.queue
        if not queue.queued or self._write is None:
            return
        pending = queue.take()
        try:
            await self._write(list(pending.values()))
        except BaseException as exc:  # put the batch back in front; the next round retries it
            queue.put_back(pending)
            if not isinstance(exc, Exception):
                raise  # cancelled mid-write (a stop): the final flush writes the batch again
            queue.errors += 1
            queue.last_error = f"{type(exc).__name__}: {exc}"
            log.error("records not saved", extra={"sink": self.name, "error": queue.last_error})
            return
        queue.written += len(pending)
