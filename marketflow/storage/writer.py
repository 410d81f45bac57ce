"""The storage writer actor: trade batches from the bus → the database, losing nothing when it fails.

Two tasks share the work, so reading never waits for the database:

- the reader takes every batch from the subscription as it comes and cuts the stream into chunks, sealed
  at `batch_max` trades or `flush_interval_s` after the chunk's first trade arrived, whichever is first;
- the flusher commits sealed chunks in arrival order, one transaction each, retrying with backoff.

Unwritten chunks form one FIFO: `head` (in memory) → the disk spool → `tail` (in memory, only while the
spool is not empty). While memory holds more than `buffer_max` trades, further chunks go to the spool
(append-only, fsync per chunk, checksummed: `spool.py`), which is replayed in order when the database
answers again — also after a restart, before anything new. Writes are idempotent by trade identity, so a
chunk written twice (a replay after a crash, a redundant daemon) is still one row per trade.

Shutdown (the bus closes): the last chunk is sealed and memory goes to the database within
`shutdown_write_s`; whatever it cannot take by then goes to the spool, which the next start replays.
A SIGKILL loses what was received within one flush interval and, during an outage, what memory held
(at most `buffer_max` trades; 0 spools every chunk the database did not take): the spool survives.

A full disk (or any spool write error): a chunk counts as spooled only once its record is fsynced; one the
spool refused stays in memory. Memory then holds at most `buffer_max` trades and the reader waits (pushing
back on the bus, as without a spool); `state` says `disk_full` (or `spool_failing`), and the spool is tried
again after each failed database attempt and after each replayed record, until a write succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence

import attrs
import trio

from marketflow.model import Trade, now_us
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Subscription, receive_batches
from marketflow.storage.spool import Spool, SpoolError
from marketflow.storage.store import SchemaVersionError, StorageError, TradeStore

__all__ = ["SchemaVersionError", "StorageError", "StorageWriter", "TradeStore", "WriterStatistics"]

log = logging.getLogger("marketflow.storage")

DAY_US = 86_400_000_000
GATHER_S = 0.05
"""While trades trickle in (few batches per wake-up), the reader lets batches gather on the bus this long
(at most until the chunk is due) instead of waking for each: the chunk is sealed at the same time."""
FEW_BATCHES = 8
LAST_RESORT_S = 5.0  # most a stopping writer spends putting what memory still holds on disk


@attrs.frozen
class WriterStatistics:
    """`/collectors/storage/stats`. Counts are trades unless named otherwise.

    `buffered`: in memory, not yet committed; `spooled`: on disk, not yet committed; `lag_ms`: age of the
    oldest uncommitted trade, or (nothing pending) how old the newest trade of the last batch was when it
    was committed.
    """

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
    spooled: int = 0
    spooled_total: int = 0
    replayed: int = 0
    spool_corrupt: int = 0
    spool_path: str | None = None
    pruned: int = 0
    prune_batches: int = 0
    spool_errors: int = 0
    spool_failing: bool = False
    spool_error: str | None = None
    reads: int = 0
    """How many times the reader took batches from the bus."""


class StorageWriter:
    """Owns one store (and optionally a spool); batches trades from `subscription` into it."""

    def __init__(
        self,
        store: TradeStore,
        subscription: Subscription[Trade],
        *,
        batch_max: int,
        flush_interval_s: float,
        backoff: Backoff | None = None,
        name: str = "storage",
        spool: Spool | None = None,
        buffer_max: int | None = None,
        shutdown_write_s: float = 5.0,
        retention_days: int = 0,
        prune_interval_s: float = 60.0,
        prune_batch: int = 5000,
        prune_pause_s: float = 0.01,
    ) -> None:
        self.name = name
        self._store = store
        self._subscription = subscription
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._spool = spool
        # Without a spool an overflow has nowhere to go: the reader then waits (pushing back on the bus).
        self._buffer_max = math.inf if buffer_max is None else buffer_max
        self._shutdown_write_s = shutdown_write_s
        self._retention_us = retention_days * DAY_US
        self._prune_interval_s = prune_interval_s
        self._prune_batch = prune_batch
        self._prune_pause_s = prune_pause_s

        self._assembling: list[Trade] = []
        self._head: deque[list[Trade]] = deque()
        self._tail: deque[list[Trade]] = deque()
        self._head_trades = 0
        self._tail_trades = 0
        self._memory_lock = trio.Lock()
        self._work = trio.Event()
        self._room = trio.Event()
        self._input_done = trio.Event()
        self._connected = trio.Event()
        self._final_deadline = math.inf
        self._attempt_scope: trio.CancelScope | None = None
        self._spool_failure: SpoolError | None = None  # the spool's last write failed; none succeeded since

        self._state = "starting"
        self.on_commit: Callable[[Sequence[Trade]], None] | None = None
        """Called with each committed chunk (`marketflow bench` measures exchange → committed latency)."""
        self.hold_store_open = False
        """After the bus ends, keep the store open until `request_stop()` (the daemon sets this: other
        actors that stop later — the candle sink, the gap ledger — still write through it)."""
        self._stop_requested = trio.Event()
        self._rows_received = 0
        self._rows_written = 0
        self._duplicates = 0
        self._batches = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_lag_ms: float | None = None
        self._last_batch_ms: float | None = None
        self._pruned = 0
        self._prune_batches = 0
        self._reads = 0

    # -- statistics -----------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._assembling) + self._head_trades + self._tail_trades

    def _oldest_pending_recv_ts(self) -> int | None:
        if self._head:
            return self._head[0][0].recv_ts
        if self._spool:
            return self._spool.statistics().oldest_recv_ts
        if self._tail:
            return self._tail[0][0].recv_ts
        return self._assembling[0].recv_ts if self._assembling else None

    def statistics(self) -> WriterStatistics:
        oldest = self._oldest_pending_recv_ts()
        lag_ms = self._last_lag_ms if oldest is None else (now_us() - oldest) / 1000
        spool = self._spool.statistics() if self._spool is not None else None
        failure = self._spool_failure
        state = self._state
        if failure is not None and state != "stopped":
            state = "disk_full" if failure.disk_full else "spool_failing"
        return WriterStatistics(
            name=self.name,
            engine=self._store.engine_name,
            url=self._store.display_url,
            state=state,
            rows_received=self._rows_received,
            rows_written=self._rows_written,
            duplicates=self._duplicates,
            batches=self._batches,
            errors=self._errors,
            last_error=self._last_error,
            buffered=self.buffered,
            lag_ms=lag_ms,
            last_batch_ms=self._last_batch_ms,
            spooled=spool.trades if spool else 0,
            spooled_total=spool.appended_trades if spool else 0,
            replayed=spool.replayed_trades if spool else 0,
            spool_corrupt=spool.corrupt_records if spool else 0,
            spool_path=spool.directory if spool else None,
            pruned=self._pruned,
            prune_batches=self._prune_batches,
            spool_errors=spool.write_errors + spool.remove_errors if spool else 0,
            spool_failing=failure is not None,
            spool_error=None if failure is None else str(failure),
            reads=self._reads,
        )

    # -- the actor ------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._spool is not None:
            await self._spool.open()
        receiver = self._subscription.receiver()
        self._state = "connecting"
        # One attempt before reporting ready, so a normal start is connected; if the database is down the
        # writer is ready anyway (the bus must be drained meanwhile) and the flusher keeps trying.
        await self._try_open()
        task_status.started()
        try:
            with receiver:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, receiver)
                    nursery.start_soon(self._flush_then_stop_pruning, nursery.cancel_scope)
                    nursery.start_soon(self._prune_loop)
            if self.hold_store_open:
                self._state = "drained"
                await self._stop_requested.wait()
        finally:
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + LAST_RESORT_S
                if self.buffered and self._spool is not None:
                    await self._spool_last_resort()
                await self._store.close()
                if self._spool is not None:
                    await self._spool.close()
            self._state = "stopped"

    def request_stop(self) -> None:
        """The supervisor stops this actor: the store may close once the bus has been drained."""
        self._stop_requested.set()

    async def _flush_then_stop_pruning(self, scope: trio.CancelScope) -> None:
        await self._flush()
        scope.cancel()  # the reader is done too by now; only the pruner is left

    # -- reader ---------------------------------------------------------------------------------------------

    async def _read(self, receiver: trio.MemoryReceiveChannel[list[Trade]]) -> None:
        assembling = self._assembling
        deadline = math.inf
        while True:
            ended = False
            batches: list[list[Trade]] = []
            with trio.move_on_at(deadline):
                try:
                    batches = await receive_batches(receiver)
                except trio.EndOfChannel:
                    ended = True
                else:
                    self._reads += 1
                    if not assembling:
                        deadline = trio.current_time() + self._flush_interval_s
                    for batch in batches:
                        assembling.extend(batch)
                        self._rows_received += len(batch)
            if ended:
                break
            if len(assembling) >= self._batch_max or trio.current_time() >= deadline:
                await self._seal_all()
                deadline = math.inf
            elif len(batches) < FEW_BATCHES and assembling:
                # A trickle: one wake-up per GATHER_S takes what gathered, not one per batch. A burst
                # (many batches per wake-up) never waits; the bus's capacity bounds what can gather.
                await trio.sleep_until(min(deadline, trio.current_time() + GATHER_S))
        await self._seal_all()
        self._final_deadline = trio.current_time() + self._shutdown_write_s
        self._input_done.set()
        if self._attempt_scope is not None:
            self._attempt_scope.deadline = min(self._attempt_scope.deadline, self._attempt_deadline())
        self._wake()

    async def _seal_all(self) -> None:
        while self._assembling:
            await self._enqueue()

    async def _enqueue(self) -> None:
        """Seal the next chunk of what is being assembled into memory (or the spool)."""
        # Under the memory lock: which of head, spool and tail a chunk belongs to must not change while
        # the flusher moves chunks between them. The chunk leaves `assembling` only under it too, so
        # `buffered` counts it all along.
        async with self._memory_lock:
            chunk = self._assembling[: self._batch_max]
            del self._assembling[: len(chunk)]
            if self._spool or self._tail:
                self._tail.append(chunk)  # the spool holds older trades: this waits behind them
                self._tail_trades += len(chunk)
            else:
                self._head.append(chunk)
                self._head_trades += len(chunk)
            self._wake()
            if self._spool is not None and self._over_buffer_max():
                with contextlib.suppress(SpoolError):  # noted; the chunks wait in memory
                    await self._spill_newest()
        # No spool, or it refuses writes: memory stays within buffer_max by waiting (the bus backs up).
        while self._over_buffer_max() and (self._spool is None or self._spool_failure is not None):
            self._room = trio.Event()
            await self._room.wait()

    def _over_buffer_max(self) -> bool:
        return self._head_trades + self._tail_trades > self._buffer_max

    async def _spill_newest(self) -> None:
        """Memory over `buffer_max`: the newest chunks go to the end of the spool, in order (lock held)."""
        if not self._tail and not self._spool:
            # Nothing spooled yet: the newest head chunks start the spool (they wait in the tail until
            # their record is on disk). The oldest stays: it may be in flight, and the flusher spills it
            # itself if the write fails.
            while len(self._head) > 1 and self._head_trades > self._buffer_max:
                chunk = self._head.pop()
                self._head_trades -= len(chunk)
                self._tail.appendleft(chunk)
                self._tail_trades += len(chunk)
        await self._spill_tail()

    async def _spill_tail(self) -> None:
        """The tail's oldest chunks go to the end of the spool while memory is over `buffer_max`."""
        while self._tail and self._over_buffer_max():
            await self._spool_append(self._tail[0])
            self._tail_trades -= len(self._tail.popleft())
            self._wake()

    async def _spool_append(self, chunk: list[Trade]) -> None:
        assert self._spool is not None
        try:
            await self._spool.append(chunk)
        except SpoolError as exc:
            self._note_spool_failure(exc)
            raise
        self._note_spool_success()

    async def _spool_prepend(self, chunks: list[list[Trade]]) -> None:
        assert self._spool is not None
        try:
            await self._spool.prepend(chunks)
        except SpoolError as exc:
            self._note_spool_failure(exc)
            raise
        self._note_spool_success()

    def _note_spool_failure(self, exc: SpoolError) -> None:
        # Logged when it starts failing, not at every retry.
        level = logging.DEBUG if self._spool_failure is not None else logging.ERROR
        self._spool_failure = exc
        log.log(
            level,
            "cannot write to the spool; trades wait in memory (up to buffer_max, then the bus backs up)",
            extra={"error": str(exc), "disk_full": exc.disk_full, "buffered": self.buffered},
        )

    def _note_spool_success(self) -> None:
        if self._spool_failure is None:
            return
        self._spool_failure = None
        self._room.set()
        log.warning("the spool takes writes again", extra={"buffered": self.buffered})

    def _wake(self) -> None:
        self._work.set()

    # -- flusher --------------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        while True:
            if not self._connected.is_set():
                if await self._try_open():
                    continue
            elif self._head:
                chunk = self._head[0]
                if await self._attempt(chunk):
                    self._head.popleft()
                    self._head_trades -= len(chunk)
                    self._room.set()
                    continue
            elif self._input_done.is_set() and self._tail:
                # Shutting down: memory first; the spool is durable and the next start replays it.
                await self._tail_to_head()
                continue
            elif self._spool and not (
                self._input_done.is_set() and trio.current_time() >= self._final_deadline
            ):
                batch = await self._spool.peek()
                if batch is None:
                    continue
                if await self._attempt(batch, replay=True):
                    await self._spool.consume()
                    if self._spool_failure is not None:
                        await self._spill_excess()  # a replayed segment may have freed the disk
                    continue
            elif self._tail:
                await self._tail_to_head()  # the spool is drained: what waited behind it is next
                continue
            elif self._input_done.is_set():
                return
            else:
                self._state = "running"
                self._spool_failure = None  # nothing waits for the spool any more
                self._work = trio.Event()
                await self._work.wait()
                continue
            # The last attempt failed.
            if self._input_done.is_set() and self._spool is not None:
                with contextlib.suppress(SpoolError):  # noted; the last resort in `run` tries once more
                    await self._spool_everything()
                return
            await self._spill_excess()
            delay = self._backoff.next_delay()
            with trio.move_on_after(delay):
                if self._spool is not None:
                    await self._input_done.wait()  # shutting down: stop waiting, spool instead
                else:
                    await trio.sleep_forever()

    def _attempt_deadline(self) -> float:
        # Once the bus is closed, the database gets until the final deadline; then the spool takes over.
        # Without a spool there is nowhere else to go, so it keeps trying until the supervisor cancels.
        if self._input_done.is_set() and self._spool is not None:
            return self._final_deadline
        return math.inf

    async def _tail_to_head(self) -> None:
        async with self._memory_lock:
            if self._head or (self._spool and not self._input_done.is_set()):
                return  # the reader spilled meanwhile: look again
            self._head, self._tail = self._tail, self._head
            self._head_trades, self._tail_trades = self._tail_trades, 0

    async def _try_open(self) -> bool:
        with trio.CancelScope(deadline=self._attempt_deadline()) as scope:
            self._attempt_scope = scope
            try:
                await self._store.open()
            except Exception as exc:  # unreachable, refused, wrong schema: keep reading, spool, try again
                self._note_failure(exc, "cannot open storage; retrying")
                return False
            finally:
                self._attempt_scope = None
        if scope.cancelled_caught:
            self._note_failure(TimeoutError("no answer before the shutdown deadline"), "cannot open storage")
            return False
        self._connected.set()
        self._state = "running"
        log.info("storage connected", extra={"url": self._store.display_url})
        return True

    async def _attempt(self, chunk: list[Trade], *, replay: bool = False) -> bool:
        started = trio.current_time()
        with trio.CancelScope(deadline=self._attempt_deadline()) as scope:
            self._attempt_scope = scope
            try:
                inserted = await self._store.write_trades(chunk)
            except Exception as exc:  # any driver failure: keep the rows, back off, try again
                self._note_failure(exc, "storage write failed; retrying")
                return False
            finally:
                self._attempt_scope = None
        if scope.cancelled_caught:
            self._note_failure(
                TimeoutError("no answer before the shutdown deadline"), "storage write timed out"
            )
            return False
        self._backoff.reset()
        self._state = "replaying" if replay else "running"
        self._batches += 1
        self._rows_written += inserted
        self._duplicates += len(chunk) - inserted
        self._last_batch_ms = (trio.current_time() - started) * 1000
        self._last_lag_ms = (now_us() - chunk[-1].recv_ts) / 1000
        if self.on_commit is not None:
            self.on_commit(chunk)
        return True

    def _note_failure(self, exc: Exception, message: str) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._state = "schema_mismatch" if isinstance(exc, SchemaVersionError) else "retrying"
        log.error(
            message,
            extra={
                "url": self._store.display_url,
                "error": self._last_error,
                "buffered": self.buffered,
                "spooled": self._spool.trades if self._spool is not None else 0,
            },
        )

    async def _spill_excess(self) -> None:
        """After a failure, memory over `buffer_max` goes to the spool: the tail to its end, then the
        newest head chunks to its front (they are older than what it holds). A failure is noted and
        retried at the next call."""
        if self._spool is None or not self._over_buffer_max():
            return
        with contextlib.suppress(SpoolError):
            async with self._memory_lock:
                await self._spill_tail()
                await self._spill_head()

    async def _spill_head(self) -> None:
        """The newest head chunks beyond `buffer_max` go to the front of the spool (lock held)."""
        if self._over_buffer_max():
            keep = 0
            kept_trades = 0
            for chunk in self._head:
                if kept_trades + len(chunk) + self._tail_trades > self._buffer_max:
                    break
                keep += 1
                kept_trades += len(chunk)
            spill = list(self._head)[keep:]
            if spill:
                await self._spool_prepend(spill)
                for _ in spill:
                    self._head.pop()
                self._head_trades = kept_trades
                self._room.set()

    async def _spool_everything(
        self,
        why: str = "database unavailable at shutdown; unwritten trades are in the spool for the next start",
    ) -> None:
        """Shutdown with the database unavailable: memory goes to the spool, in order, durably."""
        assert self._spool is not None
        async with self._memory_lock:
            if self._head:
                await self._spool_prepend(list(self._head))
                self._head.clear()
                self._head_trades = 0
            while self._tail:
                await self._spool_append(self._tail[0])
                self._tail_trades -= len(self._tail.popleft())
        log.warning(why, extra={"url": self._store.display_url, "spooled": self._spool.trades})

    async def _spool_last_resort(self) -> None:
        """Cancelled or crashed with trades in memory: a local fsync is still quick, so keep them."""
        assert self._spool is not None
        if self._assembling:
            self._tail.append(self._assembling[:])
            self._tail_trades += len(self._assembling)
            self._assembling.clear()
        try:
            await self._spool_everything("writer stopped abruptly; the trades it held are in the spool")
        except Exception as exc:  # already failing: report what is lost, keep the original error going
            log.error(
                "could not spool trades held in memory; they are lost",
                extra={"trades": self.buffered, "error": f"{type(exc).__name__}: {exc}"},
            )

    # -- retention ------------------------------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        if self._retention_us <= 0:
            return
        while True:
            await self._connected.wait()
            cutoff = now_us() - self._retention_us
            while True:
                # The SPEC §12 tables (derivatives, liquidations, quotes) age out with the trades.
                prune_more = getattr(self._store, "prune_market_data", None)
                try:
                    trades = await self._store.prune_trades(cutoff, self._prune_batch)
                    more = 0 if prune_more is None else await prune_more(cutoff, self._prune_batch)
                    deleted = trades + more
                except Exception as exc:  # the database is down: the writer reports it; try next round
                    self._errors += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "retention pruning failed; trying again later", extra={"error": self._last_error}
                    )
                    break
                if deleted:
                    self._pruned += deleted
                    self._prune_batches += 1
                if trades < self._prune_batch and more < self._prune_batch:
                    break
                # Small batches with a pause between them: writes never wait for more than one batch.
                await trio.sleep(self._prune_pause_s)
            await trio.sleep(self._prune_interval_s)
