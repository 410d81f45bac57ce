"""The daemon's feeds: what a configured feed becomes (connections, decoders, REST clients, books), adding,
stopping and restarting feeds on a reload, and the hooks a feed calls when its connection comes back."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from marketflow import exchanges
from marketflow.config import Config, ConfigError, FeedConfig, load_config
from marketflow.daemon_children import Child, ChildTable
from marketflow.exchanges.base import ReconnectTrades, Venue
from marketflow.pipeline.backfill import CatchUp
from marketflow.pipeline.bookkeeper import BookSpec
from marketflow.pipeline.feed import FeedCounters
from marketflow.pipeline.instruments import MarketSymbols
from marketflow.pipeline.rest import RestClient, WeightBudget

log = logging.getLogger("marketflow.daemon")

# Share of each venue's published REST weight limit (`Venue.rest_budget`) we allow ourselves (the rest is
# headroom for other clients on the same IP and for the venue's own accounting differences).
REST_BUDGET_SHARE = 0.5


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


# Every section but the feeds (and where the file came from) needs a restart to take effect: derived from
# `Config` so a section added later is never silently ignored by a reload.
RESTART_SECTIONS: tuple[str, ...] = tuple(
    field.name for field in attrs.fields(Config) if field.name not in ("feeds", "source", "digest")
)


class FeedWiring(ChildTable):
    """The part of `Daemon` that plans, changes and watches its feeds."""

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
