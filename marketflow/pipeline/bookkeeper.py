"""The book keeper actor: applies book updates per symbol, checks every one, resyncs only what broke.

Each symbol has its own synchronizer (`Venue.synchronizer`) with its venue's sequence rule. A gap or a
crossed book puts that symbol alone into `resyncing` (its book is emptied, so nothing built across the gap
can be read), opens a record in the gap ledger, and starts the venue's recovery (`Venue.book_recovery`):
`REST_SNAPSHOT` books are re-seeded from a REST snapshot (through the exchange market's weight budget, a
few at a time, so a mass reconnect cannot cause a snapshot storm); `RESUBSCRIBE` topics are resubscribed,
which makes the venue send a fresh snapshot. When the book is synced again the ledger record is closed.
Synced books are written as top-N snapshots periodically.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from marketflow import exchanges
from marketflow.exchanges.base import BookRecovery
from marketflow.exchanges.orderbook import BookState, BookStatistics, Gap, Synchronizer
from marketflow.model import BookUpdate, GapRecord, Level, now_us
from marketflow.pipeline.gaps import GapLedger
from marketflow.pipeline.rest import RestClient, RestError
from marketflow.runtime.bus import Subscription, receive_batches

log = logging.getLogger("marketflow.books")

SNAPSHOT_CONCURRENCY = 4
SNAPSHOT_RETRY_S = 1.0


@attrs.frozen
class BookSpec:
    """Where one symbol's book comes from."""

    exchange: str
    market: str
    symbol: str
    native: str
    feed: str  # the connection that carries its updates
    topic: str
    depth: int | None = None
    """The subscribed book depth (the feed's `book_depth`), for venues whose messages do not say it."""


@attrs.frozen
class BookSnapshotRow:
    exchange: str
    symbol: str
    ts: int
    depth: int
    bids: list[Level]
    asks: list[Level]


@attrs.frozen
class BookView:
    exchange: str
    symbol: str
    status: str  # synced | resyncing | waiting
    bids: list[Level]
    asks: list[Level]
    ts: int | None
    last_id: int | None


@attrs.frozen
class KeeperStatistics:
    name: str
    books: dict[str, BookStatistics]
    snapshot_requests: int
    snapshot_failures: int
    resubscribes: int
    snapshots_written: int


def make_synchronizer(spec: BookSpec) -> Synchronizer:
    return exchanges.venue(spec.exchange).synchronizer(spec.market, spec.depth)


class LiveBooks:
    """Every live book of the daemon, with what outlives any one `BookKeeper`: specs, synchronizers, the
    open gap records and the counters. Reads (API, analytics) and feed events come here."""

    def __init__(self, specs: Sequence[BookSpec], ledger: GapLedger) -> None:
        self.ledger = ledger
        self.specs = {(s.exchange, s.symbol): s for s in specs}
        self.books: dict[tuple[str, str], Synchronizer] = {
            key: make_synchronizer(s) for key, s in self.specs.items()
        }
        self.updated: dict[tuple[str, str], int] = {}
        self.open_gaps: dict[tuple[str, str], GapRecord] = {}
        self.fetching: set[tuple[str, str]] = set()
        self.snapshot_requests = 0
        self.snapshot_failures = 0
        self.resubscribes = 0
        self.snapshots_written = 0
        self.kick: Callable[[], None] = lambda: None
        """Start the snapshot fetches books need; set by the running keeper."""

    # -- reads (API, analytics) -------------------------------------------------------------------

    def view(self, exchange: str, symbol: str, depth: int | None = None) -> BookView | None:
        """The book as it may be served: empty with its status unless synced; None if not kept."""
        key = (exchange, symbol)
        sync = self.books.get(key)
        if sync is None:
            return None
        if sync.state is not BookState.SYNCED:
            return BookView(exchange, symbol, str(sync.state), [], [], self.updated.get(key), None)
        bids, asks = sync.book.levels() if depth is None else sync.book.top(depth)
        return BookView(exchange, symbol, "synced", bids, asks, self.updated.get(key), sync.last_id)

    def keys(self) -> list[tuple[str, str]]:
        return list(self.books)

    def statistics(self) -> KeeperStatistics:
        return KeeperStatistics(
            "books",
            {f"{ex}:{sym}": sync.statistics() for (ex, sym), sync in self.books.items()},
            self.snapshot_requests,
            self.snapshot_failures,
            self.resubscribes,
            self.snapshots_written,
        )

    # -- books coming and going (live symbol changes) ---------------------------------------------

    def add_specs(self, specs: Sequence[BookSpec]) -> None:
        """Keep books for these symbols too (they start WAITING for their first snapshot)."""
        for spec in specs:
            key = (spec.exchange, spec.symbol)
            self.specs[key] = spec
            self.books[key] = make_synchronizer(spec)

    def remove_feed(self, feed: str) -> None:
        """Forget the books carried by a connection that is going away."""
        for key in [k for k, s in self.specs.items() if s.feed == feed]:
            del self.specs[key], self.books[key]
            self.updated.pop(key, None)
            record = self.open_gaps.pop(key, None)
            if record is not None:
                self.ledger.close(record)

    # -- events from feeds ------------------------------------------------------------------------

    def feed_disconnected(self, feed: str) -> None:
        """The connection carrying these books dropped: they are stale until resynced."""
        for key, spec in self.specs.items():
            if spec.feed == feed:
                self.books[key].reset()
        self.kick()


class BookKeeper:
    """Applies book updates to `LiveBooks` and recovers the books that broke; an actor.

    A fresh keeper per start, over the same books: every update it has not taken waits on its bus
    subscription, and a batch its predecessor took but did not finish shows as a sequence gap on the
    next update, which resyncs that book as any gap does. A snapshot fetch cut short is asked again.
    """

    def __init__(
        self,
        subscription: Subscription[BookUpdate],
        books: LiveBooks,
        clients: Mapping[tuple[str, str], RestClient],
        resubscribe: Callable[[str, list[str]], Awaitable[bool]],
        *,
        persist: Callable[[list[BookSnapshotRow]], Awaitable[None]] | None = None,
        snapshot_interval_s: float = 10.0,
        snapshot_depth: int = 20,
        name: str = "books",
    ) -> None:
        self.name = name
        self.live = books
        self._subscription = subscription
        self._books = books.books
        self._specs = books.specs
        self._ledger = books.ledger
        self._clients = clients
        self._resubscribe = resubscribe
        self._persist = persist
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshot_depth = snapshot_depth
        self._limiter = trio.CapacityLimiter(SNAPSHOT_CONCURRENCY)
        self._nursery: trio.Nursery | None = None

    def statistics(self) -> KeeperStatistics:
        return self.live.statistics()

    # -- the actor --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        receiver = self._subscription.receiver()
        live = self.live
        # No snapshot fetch outlives the keeper that started it: whatever an earlier one had under way is
        # asked again (else its book would wait for an answer that never comes).
        for sync in live.books.values():
            sync.snapshot_failed()
        live.fetching.clear()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                live.kick = self._kick_snapshots
                if self._persist is not None:
                    nursery.start_soon(self._snapshot_writer)
                task_status.started()
                self._kick_snapshots()
                with receiver:
                    while True:
                        try:
                            batches = await receive_batches(receiver)
                        except trio.EndOfChannel:
                            break
                        for batch in batches:
                            self._apply(batch)
                        self._kick_snapshots()
                nursery.cancel_scope.cancel()
        finally:
            if live.kick == self._kick_snapshots:
                live.kick = lambda: None

    def request_stop(self) -> None:
        """The book bus closing ends the actor; nothing to flush (snapshots are periodic samples)."""

    def _apply(self, batch: list[BookUpdate]) -> None:
        books = self._books
        updated = self.live.updated
        for update in batch:
            key = (update.exchange, update.symbol)
            sync = books.get(key)
            if sync is None:  # a symbol just removed, or not kept
                continue
            before = sync.state
            gap = sync.on_update(update)
            updated[key] = update.ts
            if gap is not None:
                self._on_gap(key, gap)
            elif before is not BookState.SYNCED and sync.state is BookState.SYNCED:
                self._on_synced(key)

    def _on_gap(self, key: tuple[str, str], gap: Gap) -> None:
        spec = self._specs[key]
        if key not in self.live.open_gaps:
            self.live.open_gaps[key] = self._ledger.open(spec.exchange, spec.symbol, "book", gap.reason)
        log.warning(
            "book resyncing", extra={"exchange": spec.exchange, "symbol": spec.symbol, "reason": gap.reason}
        )
        recovery = exchanges.venue(spec.exchange).book_recovery(spec.market)
        if recovery is BookRecovery.RESUBSCRIBE and self._nursery is not None:
            self._nursery.start_soon(self._resubscribe_topic, spec)

    def _on_synced(self, key: tuple[str, str]) -> None:
        record = self.live.open_gaps.pop(key, None)
        if record is not None:
            self._ledger.close(record)

    async def _resubscribe_topic(self, spec: BookSpec) -> None:
        self.live.resubscribes += 1
        try:
            await self._resubscribe(spec.feed, [spec.topic])
        except Exception as exc:  # the feed's connection broke meanwhile: its reconnect resubscribes anyway
            log.warning(
                "resubscribe failed", extra={"feed": spec.feed, "topic": spec.topic, "error": str(exc)}
            )

    def _kick_snapshots(self) -> None:
        if self._nursery is None:
            return
        for key, sync in self._books.items():
            if key not in self.live.fetching and sync.needs_snapshot():
                self.live.fetching.add(key)
                sync.snapshot_requested()
                self._nursery.start_soon(self._fetch_snapshot, key)

    async def _fetch_snapshot(self, key: tuple[str, str]) -> None:
        spec = self._specs.get(key)
        sync = self._books.get(key)
        if spec is None or sync is None:
            self.live.fetching.discard(key)
            return
        client = self._clients.get((spec.exchange, spec.market))
        try:
            if client is None:
                raise RestError(f"no REST endpoint for {spec.exchange} {spec.market}")
            venue = exchanges.venue(spec.exchange)
            request = venue.snapshot_request(spec.market, spec.native)
            async with self._limiter:
                self.live.snapshot_requests += 1
                body = await client.get(request.path, request.params, request.weight)
            snapshot = venue.parse_snapshot(spec.market, body, spec.symbol, now_us())
        except (RestError, ValueError) as exc:
            self.live.snapshot_failures += 1
            log.warning("book snapshot failed", extra={"symbol": spec.symbol, "error": str(exc)})
            sync.snapshot_failed()
            await trio.sleep(SNAPSHOT_RETRY_S)
        else:
            if self._books.get(key) is not sync:  # the symbol was removed while we fetched
                return
            before = sync.state
            gap = sync.on_snapshot(snapshot)
            if gap is not None:
                self._on_gap(key, gap)
            elif before is not BookState.SYNCED and sync.state is BookState.SYNCED:
                self.live.updated[key] = snapshot.ts
                self._on_synced(key)
        finally:
            self.live.fetching.discard(key)
        self._kick_snapshots()

    async def _snapshot_writer(self) -> None:
        assert self._persist is not None
        while True:
            await trio.sleep(self._snapshot_interval_s)
            rows = []
            ts = now_us()
            for (exchange, symbol), sync in self._books.items():
                if sync.state is BookState.SYNCED:
                    bids, asks = sync.book.top(self._snapshot_depth)
                    rows.append(BookSnapshotRow(exchange, symbol, ts, self._snapshot_depth, bids, asks))
            if rows:
                try:
                    await self._persist(rows)
                    self.live.snapshots_written += len(rows)
                except Exception as exc:  # a sample lost is not data lost; the next interval tries again
                    log.error("book snapshots not saved", extra={"error": f"{type(exc).__name__}: {exc}"})
