"""The daemon's table of children, in start order, and the factories that build a fresh actor for each
(re)start over the state that outlives it (see daemon.py for the order and why)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from marketflow import exchanges
from marketflow.api.app import create_app
from marketflow.api.mcp import build_asgi
from marketflow.api.mcp_routes import register_mcp_routes
from marketflow.api.server import HttpServer
from marketflow.archive import make_archiver
from marketflow.daemon_state import DaemonState
from marketflow.pipeline.backfill import Backfiller
from marketflow.pipeline.bookkeeper import BookKeeper, BookSnapshotRow
from marketflow.pipeline.feed import Feed
from marketflow.pipeline.market_actors import RestPoller
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.actor import Actor
from marketflow.runtime.sink import RecordSink
from marketflow.runtime.supervisor import ChildSpec, Restart
from marketflow.storage import make_writer
from marketflow.storage.writer import StorageWriter

if TYPE_CHECKING:
    from marketflow.daemon_feeds import Connection


@attrs.frozen
class Child:
    """One row of the daemon's table of children: its name, what builds a fresh actor for each (re)start,
    and what the supervisor calls when it stops the child (closing the bus the actor drains)."""

    name: str
    build: Callable[[], Actor]
    on_stop: Callable[[], None] | None = None


class ChildTable(DaemonState):
    """The part of `Daemon` that lists its children and builds their actors."""

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
