"""The daemon: wires the actor tree from a `Config` and runs it under one supervisor.

Start order (and so the reverse shutdown order): capture writer (with `[capture] enabled`), storage
writer, gap ledger, candle sink, trade ring, analytics (unless `analytics.enabled = false`), book keeper,
backfiller, normalizer, feeds (one child per exchange connection). Stopping a feed closes its connection;
stopping the normalizer closes the raw bus, so it decodes what is queued and returns; the book keeper,
analytics and the writer end when their buses close, the writer after committing everything.

Every (re)start of a child builds a fresh actor (`Daemon._children()`, a table); what must survive a
restart (queues, books, the ledger, the ring, live analytics) lives outside the actors.

`Daemon` keeps its state and its run here; its other parts live beside it: the table of children
(daemon_children.py), the NATS roles (daemon_nats.py), feeds, reload and reconnect hooks (daemon_feeds.py),
health and statistics (daemon_health.py).
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

import trio

from marketflow.analytics.candles import Candle
from marketflow.analytics.engine import AnalyticsEngine
from marketflow.api.queries import QueryContext
from marketflow.api.ring import TradeRing
from marketflow.archive import open_archive
from marketflow.capture import Capture
from marketflow.config import Config
from marketflow.daemon_children import Child
from marketflow.daemon_feeds import REST_BUDGET_SHARE, RESTART_SECTIONS, Connection, FeedWiring, ReloadResult
from marketflow.daemon_health import Health, HealthReport
from marketflow.daemon_nats import NatsRoles
from marketflow.exchanges.base import FrameDecoder
from marketflow.model import BookUpdate, RawFrames, Trade
from marketflow.pipeline.backfill import BackfillQueue
from marketflow.pipeline.bookkeeper import BookSnapshotRow, BookSpec, LiveBooks
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.pipeline.gaps import GapLedger
from marketflow.pipeline.instruments import InstrumentCatalog
from marketflow.pipeline.market_actors import MarketDataPlant
from marketflow.pipeline.rest import RestClient
from marketflow.runtime.actor import Actor
from marketflow.runtime.bus import Bus, Overflow
from marketflow.runtime.memory import HeapTrimmer
from marketflow.runtime.sink import RecordQueue
from marketflow.runtime.supervisor import Supervisor, SupervisorPolicy
from marketflow.storage import open_store, record_spills
from marketflow.storage.writer import StorageWriter, TradeStore
from marketflow.systemd import Notifier

__all__ = [
    "REST_BUDGET_SHARE",
    "RESTART_SECTIONS",
    "Child",
    "Connection",
    "Daemon",
    "Health",
    "ReloadResult",
    "serve",
]

log = logging.getLogger("marketflow.daemon")


def _policy(config: Config) -> SupervisorPolicy:
    s = config.supervisor
    return SupervisorPolicy(
        backoff_initial_s=s.backoff_initial_s,
        backoff_max_s=s.backoff_max_s,
        circuit_failures=s.circuit_failures,
        circuit_window_s=s.circuit_window_s,
        circuit_open_s=s.circuit_open_s,
    )


class Daemon(FeedWiring, NatsRoles, HealthReport):
    """The whole running system for one configuration.

    What must outlive a restart of a child lives here, outside its actors: the buses and their
    subscriptions, the gap ledger, the live books, the backfill queue, the record queues, the trade ring
    and the analytics engine. Each child's factory builds a fresh actor over them (`_children()`).
    """

    def __init__(
        self, config: Config, *, ssl_context: ssl.SSLContext | None = None, replay: bool = False
    ) -> None:
        """`replay`: the pipeline without feeds and HTTP, fed by `marketflow replay` (nothing is dropped)."""
        self.config = config
        self.name = "daemon"
        self._ssl_context = ssl_context
        self._replay = replay
        # Freed heap pages back to the system once a minute (glibc): RSS stays flat over months.
        self.heap = HeapTrimmer()
        capacity = config.daemon.channel_capacity
        self.raw_bus: Bus[RawFrames] = Bus("raw")
        self.trade_bus: Bus[Trade] = Bus("trades")
        self.book_bus: Bus[BookUpdate] = Bus("books")
        self._raw_sub = self.raw_bus.subscribe("normalizer", capacity, Overflow.BLOCK)
        # Roles (SPEC §13): without NATS one daemon does all three, trades going straight to storage. With
        # NATS, collected trades go to JetStream, the store role writes them from there, and the serve role
        # feeds its live views (`view_bus`) from there: every collector's trades, each once.
        roles = set(config.daemon.roles)
        nats = config.nats.enabled and not replay
        self._collect = "collect" in roles or not nats
        self._store_role = "store" in roles or not nats
        serve = "serve" in roles or not nats
        self._nats_publish = nats and self._collect
        self._nats_store = nats and self._store_role
        self._nats_serve = nats and serve
        self._store_bus: Bus[Trade] = Bus("local") if nats else self.trade_bus
        self._trade_sub = self._store_bus.subscribe("storage", capacity, Overflow.BLOCK)
        self._publish_sub = (
            self.trade_bus.subscribe("nats", capacity, Overflow.BLOCK) if self._nats_publish else None
        )
        self.view_bus: Bus[Trade] = Bus("served") if self._nats_serve else self.trade_bus
        # Trade ids the serve role saw lately (built with its first subscriber: NATS is imported only then).
        self.recent_ids: Any = None
        self._market_keys: tuple[object, set[tuple[str, str]]] = (None, set())
        self._book_sub = self.book_bus.subscribe("books", capacity, Overflow.BLOCK)
        self.feed_channels: dict[str, frozenset[str]] = {}  # per connection: what the normalizer keeps
        self.capture = (
            Capture(config.capture, config.daemon.state_dir)
            if config.capture.enabled and not replay
            else None
        )
        self.store: TradeStore = open_store(config.storage.url)
        self.archive = open_archive(config)  # queries read archived days from it (None: no archive)
        self.writer: StorageWriter | None = None  # the current one (its statistics outlive it)
        self.actors: dict[str, Actor] = {}
        """The current actor of every child: the last one its factory built."""
        self.decoders: dict[str, FrameDecoder] = {}
        self.feed_counters: dict[str, FeedCounters] = {}
        self.feeds: dict[str, Feed] = {}
        self.connections: dict[str, Connection] = {}
        self.rest_clients: dict[tuple[str, str], RestClient] = {}
        self._reload_lock = trio.Lock()
        self._edit_lock = trio.Lock()  # held from reading the file to applying it (edit_config)
        # Records the database cannot take yet: memory, then `<state_dir>/spool/records/<queue>/` (a
        # replay's state_dir is temporary: nothing may wait there).
        spills = None if replay else record_spills(config)
        records_max = config.storage.record_buffer_max
        self.ledger = GapLedger(getattr(self.store, "write_gaps", None), spills=spills, capacity=records_max)
        # Tickers, derivatives and liquidations (SPEC §12): bus, live state, record queues, REST polls.
        s = config.storage
        self.market = MarketDataPlant(
            self.store,
            capacity,
            config.derivatives.sample_interval_s,
            s.store_quotes,
            publish=self._nats_publish,  # a collector's rows go to NATS (the store role writes them)
            spills=spills,
            records_max=records_max,
        )
        book_specs: list[BookSpec] = []
        for feed in config.feeds:
            book_specs.extend(self._plan_feed(feed))
        self.books = LiveBooks(book_specs, self.ledger)
        if self._nats_serve and not self._collect:
            from marketflow.nats.serve import mirror_books  # NATS is imported only by daemons that use it

            mirror_books(self.books)
        self.backfill = BackfillQueue(self.ledger)
        # Contract terms of the markets whose amounts are contracts: /markets and the large-trade notional.
        self.instruments = InstrumentCatalog(self._instrument_markets, self.rest_clients)
        write_candles = getattr(self.store, "write_candles", None)
        self.candle_queue: RecordQueue[Candle] = RecordQueue(
            "candles",
            capacity=records_max,
            accept=write_candles is not None,
            spill=None if spills is None or write_candles is None else spills("candles", Candle),
        )
        # A replay's keeper must not wait for the database: its snapshot timer would drift with it.
        self.snapshot_queue: RecordQueue[BookSnapshotRow] | None = (
            RecordQueue("book_snapshots")
            if replay and getattr(self.store, "write_book_snapshots", None) is not None
            else None
        )
        # Analytics must never hold up the feeds: it reads live views with drop-oldest, counted. Disabled
        # (or without intervals) there is no engine and no subscription: queries use stored trades.
        self.analytics: AnalyticsEngine | None = None
        # A serving daemon on NATS publishes its closed candles too (`nats/market.py`, CandlePublisher).
        self.nats_candles: RecordQueue[Candle] | None = None
        persist: Callable[[list[Candle]], None] = self.candle_queue.submit
        if self._nats_serve:
            from marketflow.nats.market import candle_queue

            self.nats_candles = nats_candles = candle_queue(spills, records_max)

            def persist_and_publish(candles: list[Candle]) -> None:
                self.candle_queue.submit(candles)
                nats_candles.submit(candles)

            persist = persist_and_publish

        if config.analytics.enabled and bool(config.analytics.candle_intervals) and serve:
            overflow = Overflow.BLOCK if replay else Overflow.DROP_OLDEST
            self.analytics = AnalyticsEngine(
                self.view_bus.subscribe("analytics", capacity, overflow),
                config.analytics,
                persist=persist,
                max_bars=config.analytics.live_bars,
                contracts=self.instruments.contracts,
            )
        self.ring = TradeRing(
            self.view_bus.subscribe("ring", capacity, Overflow.DROP_OLDEST), config.http.trades_ring
        )
        # HTTP and MCP read everything through one query context.
        self.query = QueryContext(self, self.ring, self.analytics)
        self.supervisor = Supervisor("daemon", _policy(config), [self._spec(c) for c in self._children()])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every actor; returns after `stop()` has shut them all down."""
        log.info(
            "marketflow starting",
            extra={
                "config": self.config.source or "<built-in defaults>",
                "storage": self.store.display_url,
                "connections": list(self.connections),
            },
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._supervise, nursery.cancel_scope)
                nursery.start_soon(self.heap.run)
                nursery.start_soon(self._release_publishers)
                log.info("marketflow running")
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                for client in self.rest_clients.values():
                    await client.aclose()
        log.info("marketflow stopped")

    async def _supervise(
        self, background: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.supervisor.run(task_status=task_status)
        background.cancel()  # every actor stopped: so do the helpers beside them (the heap trimmer)

    async def _release_publishers(self) -> None:
        """When the daemon is cancelled (the shutdown deadline passed), close the decoded-data buses.

        The normalizer hands each decoded batch over shielded from cancellation (its frames are already
        off the raw bus); closing the buses wakes a hand-off waiting on a subscriber that will never read
        again, so a cancelled daemon still ends. After a graceful stop every actor is gone: closing is moot.
        """
        try:
            await trio.sleep_forever()
        finally:
            for bus in (self.trade_bus, self.book_bus, self.market.bus):
                bus.close()

    async def stop(self) -> None:
        """Graceful stop: feeds first, then drain the normalizer, then flush storage."""
        await self.supervisor.stop()


async def serve(config: Config, notifier: Notifier | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT, then stop it within `daemon.shutdown_timeout_s`.

    Under systemd (`Type=notify`) it reports READY=1 once every actor started, WATCHDOG=1 while healthy,
    RELOADING=1/READY=1 around a SIGHUP, STOPPING=1 on the way out, and a one-line STATUS= summary.
    """
    notifier = notifier or Notifier()
    daemon = Daemon(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            notifier.ready(daemon.summary())
            nursery.start_soon(
                notifier.watchdog, lambda: daemon.health().status != "unhealthy", daemon.summary
            )
            async for signum in signals:
                if signum == signal.SIGHUP:
                    notifier.reloading()
                    await daemon.reload()
                    notifier.ready(daemon.summary())
                    continue
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                break
            notifier.stopping()
            with trio.move_on_after(config.daemon.shutdown_timeout_s) as scope:
                await daemon.stop()
            if scope.cancelled_caught:
                log.error(
                    "shutdown deadline passed; cancelling what is left",
                    extra={"shutdown_timeout_s": config.daemon.shutdown_timeout_s},
                )
            nursery.cancel_scope.cancel()
    notifier.close()
