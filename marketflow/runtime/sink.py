"""A small actor that saves records handed to it synchronously (candles, gap ledger records, derivatives
samples, liquidations, quotes).

`submit()` never waits: records queue in memory and are written in batches every `flush_interval_s`. With
a `key`, a queued record is replaced by a newer one with the same key (the store upserts by it anyway). A
failed write keeps the batch for the next round — behind nothing, and never over a newer version of a
record.

With a `spill` (the daemon gives every queue one under `<state_dir>/spool/records/<name>/`), memory holds
up to half the `capacity`; past that, a task beside the drainer (`keep_spilling`) moves the oldest records
to disk (fsynced, checksummed: `storage/spool.py`) instead of dropping them — also while a write hangs —
so a database outage of any length loses nothing while the disk has room. Order is kept: the spilled
batches are written first, in order, then memory; a memory batch whose write failed after newer records
were spilled becomes the head, written before the spill. So an upserted record is never overwritten by an
older version. A stop writes what memory still holds to the spill too (the head in front), and the next
start replays it. A spill that fails (disk full) is tried again every round; meanwhile memory fills up to
`capacity` and then, as without a spill, the oldest are dropped and counted (`disk_full`, `spill_errors`).
A single `submit` of more than `capacity` records drops the oldest of them at once (bursts never come
near the default 100,000).

A database outage is logged once when it starts (ERROR, with the error), then at most once per
`FAILURE_LOG_INTERVAL_S` (WARNING, with how many rounds failed and how many records wait), and once when a
write succeeds again (INFO, how long it was down and how many records waited) — not every round.

The queue, its spill and its counters are a `RecordQueue`, apart from the `RecordSink` actor that drains
it: a supervisor restarts the sink as a fresh actor over the same queue, so a restart loses nothing queued.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import attrs
import trio

from marketflow.runtime.spill import Spill, SpillError

log = logging.getLogger("marketflow.sink")

T = TypeVar("T")

SPILL_BATCH = 1000
"""Records per spill record: a replayed batch is one write (or one NATS round) of at most this many."""


FAILURE_LOG_INTERVAL_S = 60.0
"""During an outage, a "still not saved" line at most this often (virtual trio time)."""


@attrs.define
class Outage:
    """The write failures since the last successful write, for logging them once per interval."""

    since: float  # trio time of the first failed round
    logged_at: float  # trio time of the last line logged about it
    rounds: int = 1  # failed rounds in all
    unlogged: int = 0  # failed rounds since the last line


@attrs.frozen
class SinkStatistics:
    """`queued`: in memory; `spooled`: on disk (both not yet written); `dropped`: lost past the bounds;
    `disk_full`: the spill has no room (records wait in memory, then the oldest are dropped)."""

    name: str
    queued: int
    written: int
    dropped: int
    errors: int
    last_error: str | None
    spooled: int = 0
    spooled_total: int = 0
    disk_full: bool = False
    spill_errors: int = 0
    spill_error: str | None = None


@attrs.frozen
class Taken(Generic[T]):
    """A batch handed to a writer: `done()` it once saved, `put_back()` it when not."""

    records: list[T]
    source: str  # "spill" (it stays there until done), "head" (memory older than the spill), "memory"
    pending: dict[Hashable, T]  # the memory records, by key (empty for a spilled batch)

    @property
    def spilled(self) -> bool:
        return self.source == "spill"

    @property
    def ahead(self) -> bool:
        """Older records than memory's: more may wait behind it (take again at once)."""
        return self.source != "memory"


class RecordQueue(Generic[T]):
    """Records waiting to be saved, their spill and the counters: what outlives any one `RecordSink`.

    `accept=False` (nowhere to save them) makes `submit()` discard everything. One drainer at a time
    (a `RecordSink`, or a NATS publisher) calls `take`, `done`, `put_back` and runs `keep_spilling`.

    Order, oldest first: `_head` (a memory batch whose write failed after newer records were spilled
    behind it), the spill, `_queue`. Memory holds at most `capacity` in `_queue` and as much in `_head`.
    """

    def __init__(
        self,
        name: str,
        *,
        capacity: int = 100_000,
        key: Callable[[T], Hashable] | None = None,
        accept: bool = True,
        spill: Spill[T] | None = None,
    ) -> None:
        self.name = name
        self.accept = accept
        sequence = itertools.count()
        self._key: Callable[[T], Hashable] = key if key is not None else (lambda _: next(sequence))
        self._queue: dict[Hashable, T] = {}
        self._head: dict[Hashable, T] = {}
        self._capacity = capacity
        self._wake = trio.Event()
        self._spill = spill if accept else None
        self._opened = self._spill is None
        self._spilling = trio.Lock()  # one spill write at a time; a take waits for it (older records)
        self._overflowing = trio.Event()
        self._in_flight = False  # a memory batch is being written
        self._moving = 0  # records out of `_queue` on their way to the spill (still in memory)
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None
        self.spooled_total = 0
        self.spill_errors = 0
        self.spill_error: str | None = None
        self.disk_full = False
        self._spill_failing = False
        self.outage: Outage | None = None  # writes are failing (kept across sink restarts)

    def submit(self, records: list[T]) -> None:
        if not self.accept:
            return
        for record in records:
            self._queue[self._key(record)] = record
        self._trim()
        self._wake.set()
        if self._spill is not None and len(self._queue) > self._capacity // 2:
            self._overflowing.set()

    @property
    def queued(self) -> int:
        """Records in memory, not yet written (nor taken to be)."""
        return len(self._queue) + len(self._head) + self._moving

    @property
    def spill_failing(self) -> bool:
        """The last spill write (or read) failed: it is tried again every round."""
        return self._spill_failing

    @property
    def spooled(self) -> int:
        """Records on disk, not yet written."""
        return self._spill.held if self._spill is not None and self._opened else 0

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(
            self.name,
            self.queued,
            self.written,
            self.dropped,
            self.errors,
            self.last_error,
            self.spooled,
            self.spooled_total,
            self.disk_full,
            self.spill_errors,
            self.spill_error,
        )

    async def wait_submitted(self) -> None:
        """Until something was submitted since the last call (at once if it already was)."""
        await self._wake.wait()
        self._wake = trio.Event()

    async def open(self) -> bool:
        """Open the spill (once) and index what an earlier run left there; False if it cannot be read
        (reported; tried again at the next spill or take)."""
        if self._opened:
            return True
        assert self._spill is not None
        try:
            await self._spill.open()
        except SpillError as exc:
            self._spill_failed(exc)
            return False
        self._opened = True
        if self._spill.held:
            log.warning(
                "records spilled by an earlier run are written first",
                extra={"sink": self.name, "records": self._spill.held},
            )
            self._wake.set()
        return True

    async def close(self) -> None:
        """Close the spill's open segment (a later spill opens a new one)."""
        if self._spill is not None and self._opened:
            try:
                await self._spill.close()
            except OSError as exc:
                log.error("cannot close the spill", extra={"sink": self.name, "error": str(exc)})

    async def take(self) -> Taken[T] | None:
        """The oldest records waiting: the head, else a spilled batch while the spill holds any, else all
        of memory. None when nothing waits, a memory batch is in flight, or the spill holds records it
        cannot read now (memory is newer and must wait behind them)."""
        if self._in_flight:
            return None
        if self._head:
            return self._take_memory("head")
        spill = self._spill
        if spill is None:
            return self._take_memory("memory")
        async with self._spilling:  # a spill under way finishes first: its records are older
            if await self.open() and spill.held:
                try:
                    records = await spill.peek()
                except SpillError as exc:
                    self._spill_failed(exc)
                    return None
                if records is not None:
                    return Taken(records, "spill", {})
            return self._take_memory("memory")

    def _take_memory(self, source: str) -> Taken[T] | None:
        if source == "head":
            pending, self._head = self._head, {}
        else:
            if not self._queue:
                return None
            pending, self._queue = self._queue, {}
        self._in_flight = True
        return Taken(list(pending.values()), source, pending)

    async def done(self, taken: Taken[T]) -> None:
        """A taken batch is saved: off the spill (or out of flight) and counted."""
        if taken.spilled:
            assert self._spill is not None
            try:
                await self._spill.consume()
            except SpillError as exc:  # saved anyway; a restart would only write it once more
                self._spill_failed(exc)
        else:
            self._in_flight = False
        self.written += len(taken.records)

    def put_back(self, taken: Taken[T]) -> None:
        """A taken batch was not saved: a spilled one stays first on disk; a memory one goes back in front
        of memory (what arrived meanwhile is newer and wins), or, if records were spilled while it was
        out, to the head: it is older than they are and is written before them."""
        if not taken.spilled:
            self._in_flight = False
            if taken.source == "head" or self._moving or self.spooled:
                self._head = taken.pending
            else:
                pending = dict(taken.pending)
                pending.update(self._queue)
                self._queue = pending
                self._trim()
        self._wake.set()

    async def keep_spilling(self) -> None:
        """Spill the overflow as it comes: a task beside the drainer, so that a write (or a publish) that
        hangs does not make memory overflow. A failing spill is retried by the drainer's rounds."""
        while True:
            await self._overflowing.wait()
            self._overflowing = trio.Event()
            if not self._spill_failing:
                await self.spill_overflow()

    async def spill_overflow(self) -> None:
        """Move the oldest records of `_queue` past half the capacity to the spill."""
        if self._spill is None:
            return
        async with self._spilling:
            while (excess := len(self._queue) - self._capacity // 2) > 0:
                if not await self._spill_oldest(min(excess, SPILL_BATCH)):
                    return

    async def spill_all(self) -> None:
        """At a stop: what memory still holds goes to the spill (the head in front), for the next start."""
        spill = self._spill
        if spill is None:
            return
        async with self._spilling:
            if self._head and not self._in_flight and await self.open():
                head = list(self._head.values())
                try:
                    if spill.held:
                        await spill.prepend([head])
                    else:
                        await spill.append(head)
                except SpillError as exc:
                    self._spill_failed(exc)
                    return
                self._head = {}
                self.spooled_total += len(head)
            while self._queue and await self._spill_oldest(SPILL_BATCH):
                pass

    async def _spill_oldest(self, count: int) -> bool:
        spill = self._spill
        assert spill is not None
        if not await self.open():
            return False
        keys = list(itertools.islice(self._queue, count))
        batch = {key: self._queue.pop(key) for key in keys}
        self._moving = len(batch)
        try:
            await spill.append(list(batch.values()))
        except BaseException as exc:
            self._moving = 0
            batch.update(self._queue)  # back in front; what was submitted meanwhile is newer and wins
            self._queue = batch
            self._trim()
            if not isinstance(exc, SpillError):
                raise
            self._spill_failed(exc)
            return False
        self._moving = 0
        self.spooled_total += len(batch)
        if self._spill_failing:
            log.warning("records spill to disk again", extra={"sink": self.name})
        self._spill_failing = self.disk_full = False
        return True

    def write_failed(self, exc: Exception) -> None:
        """A round's write failed: counted; logged when the outage starts, then once per interval."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = trio.current_time()
        outage = self.outage
        fields = {"sink": self.name, "_rate_key": self.name, "error": self.last_error}
        if outage is None:
            self.outage = Outage(since=now, logged_at=now)
            log.error(
                "records not saved; retrying every round",
                extra={**fields, "queued": self.queued, "spooled": self.spooled},
            )
            return
        outage.rounds += 1
        outage.unlogged += 1
        if now - outage.logged_at >= FAILURE_LOG_INTERVAL_S:
            log.warning(
                "records still not saved",
                extra={
                    **fields,
                    "failed_rounds": outage.unlogged,
                    "failed_rounds_total": outage.rounds,
                    "down_s": round(now - outage.since, 3),
                    "queued": self.queued,
                    "spooled": self.spooled,
                },
            )
            outage.logged_at = now
            outage.unlogged = 0

    def write_succeeded(self, waited: int) -> None:
        """A write succeeded: an outage, if any, is over (one line: how long, how many records waited)."""
        outage, self.outage = self.outage, None
        if outage is not None:
            log.info(
                "records saved again",
                extra={
                    "sink": self.name,
                    "down_s": round(trio.current_time() - outage.since, 3),
                    "failed_rounds": outage.rounds,
                    "waiting": waited,
                },
            )

    def _spill_failed(self, exc: SpillError) -> None:
        self.spill_errors += 1
        self.spill_error = str(exc)
        self.disk_full = exc.disk_full
        if not self._spill_failing:  # once per episode: it is tried again every round
            log.error(
                "records cannot be spilled to disk; the oldest are dropped past the queue's capacity",
                extra={"sink": self.name, "error": self.spill_error, "disk_full": self.disk_full},
            )
        self._spill_failing = True

    def _trim(self) -> None:
        # Records on their way to the spill count too (the bound holds during the append).
        overflow = min(len(self._queue), len(self._queue) + self._moving - self._capacity)
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
        if self._write is not None:
            await self.queue.open()  # what an earlier run spilled is written first
        task_status.started()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    if self._write is not None:
                        nursery.start_soon(self.queue.keep_spilling)
                    while True:
                        await self.queue.wait_submitted()
                        await trio.sleep(self._flush_interval_s)
                        await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await self._flush()
                if self._write is not None:  # what the database did not take waits on disk for the next start
                    with trio.move_on_after(5):
                        await self.queue.spill_all()
                        await self.queue.close()

    async def _flush(self) -> None:
        """Write the head and the spilled batches in order, then memory (what is past the memory bound
        spilled first)."""
        queue = self.queue
        if self._write is None:
            return
        while True:
            await queue.spill_overflow()
            taken = await queue.take()
            if taken is None:
                return
            try:
                await self._write(taken.records)
            except BaseException as exc:  # put the batch back in front; the next round retries it
                queue.put_back(taken)
                if not isinstance(exc, Exception):
                    raise  # cancelled mid-write (a stop): the final flush writes the batch again
                queue.write_failed(exc)
                await queue.spill_overflow()
                return
            if queue.outage is not None:  # what waited: this batch, memory and the spill
                queue.write_succeeded(
                    queue.queued + queue.spooled + (0 if taken.spilled else len(taken.records))
                )
            await queue.done(taken)
            if not taken.ahead:
                return  # memory is written once a round: what arrives meanwhile waits for the next
