"""The daemon: wires the actor tree from a `Config` and runs it under one supervisor.

Start order (and so the reverse shutdown order): capture writer (with `[capture] enabled`), storage
writer, gap ledger, candle sink, trade ring, analytics (unless `analytics.enabled = false`), book keeper,
backfiller, normalizer, feeds (one child per exchange connection). Stopping a feed closes its connection;
stopping the normalizer closes the raw bus, so it decodes what is queued and returns; the book keeper,
analytics and the writer end when their buses close, the writer after committing everything.

Every (re)start of a child builds a fresh actor (`Daemon._children()`, a table); what must survive a
restart (queues, books, the ledger, the ring, live analytics) lives outside the actors.
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import trio

from marketflow import exchanges
from marketflow.analytics.candles import Candle
from marketflow.analytics.engine import AnalyticsEngine
from marketflow.api.app import create_app
from marketflow.api.mcp import build_asgi
from marketflow.api.mcp_routes import register_mcp_routes
from marketflow.api.queries import QueryContext
from marketflow.api.ring import TradeRing
from marketflow.api.server import HttpServer
from marketflow.archive import make_archiver, open_archive
from marketflow.capture import Capture
from marketflow.config import Config, ConfigError, FeedConfig, load_config
from marketflow.exchanges.base import FrameDecoder, ReconnectTrades, Venue
from marketflow.model import BookUpdate, RawFrames, Trade
from marketflow.pipeline.backfill import Backfiller, BackfillQueue, CatchUp
from marketflow.pipeline.bookkeeper import BookKeeper, BookSnapshotRow, BookSpec, LiveBooks
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.pipeline.gaps import GapLedger
from marketflow.pipeline.instruments import InstrumentCatalog, MarketSymbols
from marketflow.pipeline.market_actors import MarketDataPlant, RestPoller
from marketflow.pipeline.normalizer import Normalizer
from marketflow.pipeline.rest import RestClient, WeightBudget
from marketflow.runtime.actor import Actor
from marketflow.runtime.bus import Bus, Overflow
from marketflow.runtime.memory import HeapTrimmer
from marketflow.runtime.sink import RecordQueue, RecordSink
from marketflow.runtime.supervisor import ChildSpec, Restart, Supervisor, SupervisorPolicy
from marketflow.storage import make_writer, open_store
from marketflow.storage.writer import StorageWriter, TradeStore
from marketflow.systemd import Notifier

log = logging.getLogger("marketflow.daemon")

# Share of each venue's published REST weight limit (`Venue.rest_budget`) we allow ourselves (the rest is
# headroom for other clients on the same IP and for the venue's own accounting differences).
REST_BUDGET_SHARE = 0.5


def _policy(config: Config) -> SupervisorPolicy:
    s = config.supervisor
    return SupervisorPolicy(
        backoff_initial_s=s.backoff_initial_s,
        backoff_max_s=s.backoff_max_s,
        circuit_failures=s.circuit_failures,
        circuit_window_s=s.circuit_window_s,
        circuit_open_s=s.circuit_open_s,
    )


@attrs.frozen
class Connection:
    """One supervised connection of a configured feed."""

    name: str
    feed: FeedConfig
    url: str
    topics: tuple[str, ...]
    natives: tuple[str, ...]


@attrs.frozen
class ReloadResult:
    """What a reload changed: feeds by name, and sections that only a restart applies."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    restarted: tuple[str, ...]
    needs_restart: tuple[str, ...]


@attrs.frozen
class Health:
    status: str  # healthy | degraded | unhealthy
    problems: dict[str, str]


@attrs.frozen
class Child:
    """One row of the daemon's table of children: its name, what builds a fresh actor for each (re)start,
    and what the supervisor calls when it stops the child (closing the bus the actor drains)."""

    name: str
    build: Callable[[], Actor]
    on_stop: Callable[[], None] | None = None


# Every section but the feeds (and where the file came from) needs a restart to take effect: derived from
# `Config` so a section added later is never silently ignored by a reload.
RESTART_SECTIONS: tuple[str, ...] = tuple(
    field.name for field in attrs.fields(Config) if field.name not in ("feeds", "source", "digest")
)


class Daemon:
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
        self.ledger = GapLedger(getattr(self.store, "write_gaps", None))
        # Tickers, derivatives and liquidations (SPEC §12): bus, live state, record queues, REST polls.
        s = config.storage
        self.market = MarketDataPlant(
            self.store,
            capacity,
            config.derivatives.sample_interval_s,
            s.store_quotes,
            publish=self._nats_publish,  # a collector's rows go to NATS (the store role writes them)
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
        self.candle_queue: RecordQueue[Candle] = RecordQueue(
            "candles", accept=getattr(self.store, "write_candles", None) is not None
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

            self.nats_candles = nats_candles = candle_queue()

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

    def _children(self) -> list[Child]:
        """The table of children in start order (the supervisor stops them in reverse)."""
        write_candles = getattr(self.store, "write_candles", None)
        write_snapshots = getattr(self.store, "write_book_snapshots", None)
        capture = self.capture
        snapshots = self.snapshot_queue
        analytics = self.analytics
        rows: list[Child | None] = [
            # First started, last stopped: it records what feeds and REST clients receive until the end.
            None if capture is None else Child("capture", capture.writer, capture.close),
            Child("storage", self._make_writer, self._store_bus.close),
            # Moves old trades into Parquet through the store the writer opened (`[archive] after_days`).
            Child("archive", lambda: make_archiver(self.config, self.store))
            if self.config.archive.after_days > 0 and not self._replay
            else None,
            # After storage: the ledger and the sinks write through the store the writer opened, so they
            # stop (and save what they hold) before it closes.
            Child("gaps", self.ledger.sink),
            Child("candles", lambda: RecordSink("candles", write_candles, queue=self.candle_queue)),
            *(Child(name, build) for name, build in self.market.sinks()),
            *self._nats_children("market"),
            None
            if snapshots is None
            else Child(
                "book_snapshots", lambda: RecordSink("book_snapshots", write_snapshots, queue=snapshots)
            ),
            *self._nats_children("store"),
            # Stopped after every trade publisher (normalizer, backfill): closing the trade bus lets
            # analytics (or, without it, the ring) and then storage drain it to the end.
            Child("ring", self.ring.feeder, None if analytics is not None else self.view_bus.close),
            None if analytics is None else Child("analytics", analytics.feeder, self.view_bus.close),
            *self._nats_children("serve"),
            *(self._collect_children() if self._collect else ()),
            *self._nats_children("collect"),
            # HTTP and MCP read everything above through the query context; started last, stopped first.
            None if self._replay else Child("http", self._make_http),
        ]
        return [row for row in rows if row is not None]

    def _collect_children(self) -> list[Child]:
        return [
            Child("books", self._make_book_keeper, self.book_bus.close),
            # Stopped after its publishers (normalizer, pollers): it drains the bus, then flushes samples.
            Child("market_data", self.market.keeper, self.market.bus.close),
            Child("backfill", self._make_backfiller),
            Child("instruments", self.instruments.loader),
            Child("normalizer", self._make_normalizer, self.raw_bus.close),
            *(Child(name, self._poller_factory(name)) for name in self.market.polls if not self._replay),
            *(
                Child(name, self._feed_factory(conn))
                for name, conn in self.connections.items()
                if not self._replay
            ),
        ]

    def _nats_children(self, role: str) -> list[Child]:
        """NATS actors by role (`marketflow/nats/`); none without `[nats] servers`."""
        config = self.config
        if not (self._nats_store or self._nats_serve or self._nats_publish):
            return []  # no NATS: its client library (~40 MB with its imports) is never loaded
        from marketflow.nats.collect import BookPublisher, make_publisher
        from marketflow.nats.market import CandlePublisher, MarketPublisher
        from marketflow.nats.serve import RecentIds, ServeSubscriber
        from marketflow.nats.store import MarketStoreConsumer, StoreConsumer

        if self.recent_ids is None:
            self.recent_ids = RecentIds()
        if role == "market":  # where the §12 sinks stand: stopped after the keeper flushed its samples
            if not self._nats_publish:
                return []
            return [Child("nats_market", lambda: MarketPublisher(self.market, config))]
        if role == "store":
            publish = self._publish_sub
            candles = self.nats_candles
            return [
                *(
                    [
                        Child("nats_store", lambda: StoreConsumer(self.store, config)),
                        Child("nats_store_market", lambda: MarketStoreConsumer(self.store, config)),
                    ]
                    if self._nats_store
                    else []
                ),
                # Started before analytics, so stopped after it handed over its last candles.
                *(
                    [Child("nats_candles", lambda: CandlePublisher(candles, config))]
                    if candles is not None and self.analytics is not None
                    else []
                ),
                # Drains the trade bus to JetStream once every trade publisher stopped.
                *(
                    [Child("nats_trades", lambda: make_publisher(config, publish), self.trade_bus.close)]
                    if publish is not None
                    else []
                ),
            ]
        if role == "serve" and self._nats_serve:
            view = self.view_bus
            live = self.market.live
            return [
                Child(
                    "nats_serve",
                    lambda: ServeSubscriber(
                        view,
                        self.books,
                        self.recent_ids,
                        config,
                        market=live,
                        collected=self._collects_market,
                    ),
                )
            ]
        if role == "collect" and self._nats_publish:
            return [Child("nats_books", lambda: BookPublisher(self.books, config))]
        return []

    def _collects_market(self, exchange: str, symbol: str) -> bool:
        """Whether this daemon's own feeds carry a market-data channel of that symbol (its live state is its
        own then, not mirrored from NATS)."""
        if not self._collect:
            return False
        feeds = self.config.feeds
        if self._market_keys[0] is not feeds:  # computed again only after a reload changed the feeds
            keys = {
                (feed.exchange, symbol)
                for feed in feeds
                if not {"ticker", "derivatives", "liquidations"}.isdisjoint(feed.channels)
                for symbol in feed.symbols
            }
            self._market_keys = (feeds, keys)
        return (exchange, symbol) in self._market_keys[1]

    def _poller_factory(self, name: str) -> Callable[[], RestPoller]:
        plan = self.market.polls[name]
        client = self.rest_clients[(plan.exchange, plan.market)]
        return lambda: self.market.poller(name, client)

    def _spec(self, child: Child) -> ChildSpec:
        def factory() -> Actor:
            actor = child.build()
            self.actors[child.name] = actor
            return actor

        shutdown = self.config.daemon.shutdown_timeout_s
        return ChildSpec(child.name, factory, Restart.PERMANENT, shutdown, on_stop=child.on_stop)

    @property
    def http(self) -> HttpServer | None:
        """The current HTTP server (None before it first started, and in a replay)."""
        actor = self.actors.get("http")
        return actor if isinstance(actor, HttpServer) else None

    @property
    def backfiller(self) -> Backfiller:
        """The current backfiller (its statistics and requests go to the queue every one of them shares)."""
        actor = self.actors.get("backfill")
        return actor if isinstance(actor, Backfiller) else self._make_backfiller()

    def _rest_client(self, venue: Venue, feed: FeedConfig) -> None:
        key = (feed.exchange, feed.market)
        if key in self.rest_clients:
            return
        published = venue.rest_budget(feed.market)
        budget = WeightBudget(max(1, int(published.limit * REST_BUDGET_SHARE)), published.window_s)
        url = venue.rest_url(feed.market, feed.rest_url)
        client = None if self.capture is None else self.capture.http_client(feed.exchange, feed.market, url)
        self.rest_clients[key] = RestClient(url, budget, client)

    def _instrument_markets(self) -> list[MarketSymbols]:
        """Every configured (exchange, market) with its symbols, for the instrument catalog."""
        merged: dict[tuple[str, str], dict[str, str]] = {}
        for feed in self.config.feeds:
            venue = exchanges.venue(feed.exchange)
            symbols = merged.setdefault((feed.exchange, feed.market), {})
            symbols.update({venue.native_symbol(feed.market, s): s for s in feed.symbols})
        return [MarketSymbols(ex, market, symbols) for (ex, market), symbols in merged.items()]

    def _plan_feed(self, feed: FeedConfig) -> list[BookSpec]:
        """Register the feed's connections and decoders; return the books it carries."""
        venue = exchanges.venue(feed.exchange)
        self._rest_client(venue, feed)
        natives = [venue.native_symbol(feed.market, s) for s in feed.symbols]
        by_native = dict(zip(natives, feed.symbols, strict=True))
        specs: list[BookSpec] = []
        for plan in venue.connections(feed.market, natives, feed.channels, feed.book_depth, feed.ws_url):
            name = feed.name + plan.suffix
            self.connections[name] = Connection(name, feed, plan.url, plan.topics, plan.natives)
            if self.capture is not None:
                self.capture.add_connection(name, feed, plan.url, plan.topics)
            self.decoders[name] = venue.decoder(feed.market, by_native)
            self.feed_channels[name] = frozenset(feed.channels)
            self.feed_counters.setdefault(name, FeedCounters())
            if "book" in plan.channels:
                for topic in plan.topics:
                    parsed = venue.parse_topic(feed.market, topic)
                    if parsed is not None and parsed.channel == "book":
                        native = parsed.native
                        specs.append(
                            BookSpec(feed.exchange, feed.market, by_native[native], native, name, topic)
                        )
        self.market.plan_polls(feed.name, feed.exchange, venue.markets[feed.market], feed.channels, by_native)
        return specs

    def _feed_factory(self, conn: Connection) -> Callable[[], Feed]:
        venue = exchanges.venue(conn.feed.exchange)
        counters = self.feed_counters[conn.name]
        on_reconnect: Any = self.on_reconnect
        on_disconnect: Any = self.books.feed_disconnected
        if self.capture is not None:
            on_reconnect, on_disconnect = self.capture.feed_events(on_reconnect, on_disconnect)

        def make_feed() -> Feed:
            feed = Feed(
                name=conn.name,
                exchange=conn.feed.exchange,
                market=conn.feed.market,
                url=conn.url,
                session_factory=lambda: venue.session(conn.feed.market, conn.topics),
                bus=self.raw_bus,
                counters=counters,
                stale_timeout_s=conn.feed.stale_timeout_s,
                ping_interval_s=conn.feed.ping_interval_s,
                ssl_context=self._ssl_context,
                read_coalesce_s=self.config.daemon.read_coalesce_ms / 1000,
                on_reconnect=on_reconnect,
                on_disconnect=on_disconnect,
                capture=None if self.capture is None else self.capture.frames,
                max_message=conn.feed.max_message_mb * 1024 * 1024,
            )
            self.feeds[conn.name] = feed
            return feed

        return make_feed

    def _make_writer(self) -> StorageWriter:
        self.writer = make_writer(self.config, self.store, self._trade_sub)
        self.writer.hold_store_open = True  # the candle sink and gap ledger stop after it has drained
        return self.writer

    def _make_book_keeper(self) -> BookKeeper:
        persist = getattr(self.store, "write_book_snapshots", None)
        snapshots = self.snapshot_queue
        if snapshots is not None:

            async def persist(rows: list[BookSnapshotRow]) -> None:
                snapshots.submit(rows)

        return BookKeeper(
            self._book_sub,
            self.books,
            self.rest_clients,
            self.resubscribe,
            persist=persist,
            snapshot_interval_s=self.config.books.snapshot_interval_s,
            snapshot_depth=self.config.books.snapshot_depth,
        )

    def _make_backfiller(self) -> Backfiller:
        return Backfiller(self.backfill, self.trade_bus, self.ledger, self.rest_clients, self.decoders)

    def _make_normalizer(self) -> Normalizer:
        return Normalizer(
            self._raw_sub,
            self.trade_bus,
            self.decoders,
            books=self.book_bus,
            on_trade_gaps=self.backfill.request_trade_gaps,
            market_data=self.market.bus,
            channels=self.feed_channels,
        )

    def _make_http(self) -> HttpServer:
        app = create_app(self.query)
        register_mcp_routes(app, self.query)
        return HttpServer(self.query, self.config, app=app, asgi_factory=build_asgi)

    async def apply_config(self, new: Config) -> ReloadResult:
        """Start, stop or restart only the feeds that changed; every other actor keeps running and its state.

        Sections other than `feeds` are compared too: a change there is reported in `needs_restart` (and
        logged) and not applied, since it would mean restarting storage, HTTP or analytics.
        """
        async with self._reload_lock:
            old = {f.name: f for f in self.config.feeds}
            fresh = {f.name: f for f in new.feeds}
            removed = tuple(n for n in old if n not in fresh)
            added = tuple(n for n in fresh if n not in old)
            restarted = tuple(n for n in fresh if n in old and fresh[n] != old[n])
            for name in removed + restarted:
                await self._stop_feed(name)
            for name in restarted + added:
                await self._start_feed(fresh[name])
            needs_restart = tuple(
                section
                for section in RESTART_SECTIONS
                if getattr(new, section) != getattr(self.config, section)
            )
            self.config = attrs.evolve(self.config, feeds=new.feeds, source=new.source, digest=new.digest)
            self.instruments.request_refresh()
        result = ReloadResult(added, removed, restarted, needs_restart)
        log.info("configuration applied", extra=attrs.asdict(result))
        if needs_restart:
            log.warning(
                "changed sections take effect at the next restart", extra={"sections": list(needs_restart)}
            )
        return result

    async def edit_config(self, edit: Callable[[Config], Config]) -> ReloadResult:
        """Run `edit(running config)` in a worker thread (it reads, changes and writes the file), then apply
        what it returns, under one lock: concurrent changes (symbols API, SIGHUP) never interleave, so none
        is lost. Shielded once begun: a change written to the file is applied too."""
        async with self._edit_lock:
            with trio.CancelScope(shield=True):
                new = await trio.to_thread.run_sync(edit, self.config)
                result = await self.apply_config(new)
        return result

    async def _stop_feed(self, feed_name: str) -> None:
        for name in [c for c, conn in self.connections.items() if conn.feed.name == feed_name]:
            await self.supervisor.remove_child(name)
            self.books.remove_feed(name)
            for table in (self.connections, self.decoders, self.feed_counters, self.feeds):
                table.pop(name, None)
            self.feed_channels.pop(name, None)
            self.actors.pop(name, None)
        for name in self.market.drop_polls(feed_name):
            await self.supervisor.remove_child(name)
            self.actors.pop(name, None)

    async def _start_feed(self, feed: FeedConfig) -> None:
        before = set(self.connections) | set(self.market.polls)
        self.books.add_specs(self._plan_feed(feed))
        if not self._collect:  # a serving daemon's feeds name the cluster's markets; NATS brings their data
            if self._nats_serve:
                from marketflow.nats.serve import mirror_books

                mirror_books(self.books, only_waiting=True)
            return
        for name, conn in list(self.connections.items()):
            if name not in before:
                await self.supervisor.add_child(self._spec(Child(name, self._feed_factory(conn))))
        for name in [n for n in self.market.polls if n not in before and not self._replay]:
            await self.supervisor.add_child(self._spec(Child(name, self._poller_factory(name))))

    async def reload(self) -> ReloadResult | None:
        """Re-read the configuration file; if it is invalid, log why and keep running the old one."""
        source = self.config.source
        if source is None:
            log.warning("reload asked, but the daemon runs on built-in defaults: there is no file to re-read")
            return None
        try:
            return await self.edit_config(lambda _: load_config(source))
        except ConfigError as exc:
            log.error(
                "reload refused: the configuration is invalid; the running one is kept",
                extra={"config": source, "errors": [str(i) for i in exc.issues]},
            )
            return None

    async def resubscribe(self, connection: str, topics: list[str]) -> bool:
        """Resubscribe topics on a connection's live feed (book resync of `RESUBSCRIBE` venues)."""
        feed = self.feeds.get(connection)
        return False if feed is None else await feed.resubscribe(topics)

    def on_reconnect(self, connection: str, down_since: int, up_at: int) -> None:
        """A connection is back after being down since `down_since`: record the outage per symbol.

        Books: a closed `gaps` row per symbol (they are re-snapshotted). Trades, by the venue's
        `trade_recovery().on_reconnect`: `CATCH_UP` opens a row per symbol and asks the backfiller to
        fetch what was missed; `BY_ID` and `NONE` record the outage closed at once, with the venue's reason
        (`BY_ID` gaps are found by the first live trade's id and recorded when they are fetched).
        Called by the feed, and by `marketflow replay` for recorded reconnects.
        """
        conn = self.connections.get(connection)
        if conn is None:  # removed by a reload meanwhile
            return
        feed = conn.feed
        venue = exchanges.venue(feed.exchange)
        by_native = {venue.native_symbol(feed.market, s): s for s in feed.symbols}
        symbols = tuple((native, by_native[native]) for native in conn.natives)
        parsed = (venue.parse_topic(feed.market, topic) for topic in conn.topics)
        channels = {p.channel for p in parsed if p is not None}
        for _, symbol in symbols:
            if "book" in channels:
                self.ledger.close(
                    self.ledger.open(feed.exchange, symbol, "book", "disconnected", start=down_since),
                    end=up_at,
                )
            if "liquidations" in channels:  # no venue serves missed liquidations again: say so
                reason = "disconnected; liquidations in between are not recoverable"
                self.ledger.close(
                    self.ledger.open(feed.exchange, symbol, "liquidations", reason, start=down_since),
                    end=up_at,
                )
        if "trades" not in channels:
            return
        recovery = venue.trade_recovery(feed.market)
        if recovery.on_reconnect is ReconnectTrades.CATCH_UP:
            records = tuple(
                self.ledger.open(feed.exchange, symbol, "trades", recovery.reconnect_reason, start=down_since)
                for _, symbol in symbols
            )
            self.backfiller.request_catch_up(
                CatchUp(connection, feed.exchange, feed.market, symbols, records, down_since)
            )
        else:
            for _, symbol in symbols:
                record = self.ledger.open(
                    feed.exchange, symbol, "trades", recovery.reconnect_reason, start=down_since
                )
                self.ledger.close(record, end=up_at)

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

    async def stop(self) -> None:
        """Graceful stop: feeds first, then drain the normalizer, then flush storage."""
        await self.supervisor.stop()

    def health(self) -> Health:
        """healthy; degraded when a circuit is open, a feed is down, a book is resyncing, the spool
        refuses writes (disk full), a NATS actor retries or the archive job's last pass failed; unhealthy
        when storage is not running."""
        children = {c.name: c for c in self.supervisor.statistics().children}
        problems: dict[str, str] = {}
        storage = children.get("storage")
        if storage is None or storage.state != "running":
            problems["storage"] = "not running" if storage is None else storage.state
        writer = self.writer.statistics() if self.writer is not None else None
        if writer is not None and writer.spool_failing:  # disk full: trades wait in memory, then back up
            problems["spool"] = f"{writer.state}: {writer.spool_error}"
        for name in self.connections if self._collect else ():
            child = children.get(name)
            if child is not None and child.circuit != "closed":
                problems[name] = f"circuit {child.circuit}"
            elif self.feed_counters[name].state != "streaming":
                problems[name] = self.feed_counters[name].state
        for name in (
            "nats_trades",
            "nats_store",
            "nats_store_market",
            "nats_serve",
            "nats_books",
            "nats_market",
            "nats_candles",
        ):
            actor_stats = getattr(children.get(name), "actor", None)
            state = getattr(actor_stats, "state", "running")
            if state in ("retrying", "disk_full", "spool_failing"):  # NATS (or the database) does not answer
                problems[name] = f"{state}: {getattr(actor_stats, 'last_error', None)}"
        archiver: Any = self.actors.get("archive")
        if archiver is not None and archiver.failing:  # old trades stay in the database
            problems["archive"] = archiver.statistics().last_error or "failing"
        for key, stats in self.books.statistics().books.items():
            if str(stats.state) != "synced":
                problems[f"book {key}"] = str(stats.state)
        status = "unhealthy" if "storage" in problems else "degraded" if problems else "healthy"
        return Health(status, problems)

    def summary(self) -> str:
        """One line for systemd's STATUS= and logs."""
        streaming = sum(1 for c in self.feed_counters.values() if c.state == "streaming")
        trades = sum(c.data_frames for c in self.feed_counters.values())
        health = self.health()
        return (
            f"{health.status}; {streaming}/{len(self.feed_counters)} connections streaming; "
            f"{trades} data frames; {len(health.problems)} problems"
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "supervisor": attrs.asdict(self.supervisor.statistics(), recurse=False),
            "buses": [
                *(bus.statistics() for bus in (self.raw_bus, self.trade_bus, self.book_bus)),
                self.market.bus.statistics(),
            ],
        }


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
