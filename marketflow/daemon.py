"""The daemon: wires the actor tree from a `Config` and runs it under one supervisor.

Start order (and so the reverse shutdown order): storage writer, normalizer, feeds. Stopping a feed
cancels its connection; stopping the normalizer closes the raw bus, so it decodes what is queued and
returns; stopping the writer closes the trade bus, so it commits everything and returns.
"""

from __future__ import annotations

import logging
import signal
import ssl
from types import ModuleType
from typing import Any

import attrs
import trio

from marketflow import exchanges
from marketflow.config import Config, FeedConfig
from marketflow.exchanges.base import FrameDecoder
from marketflow.model import RawFrames, Trade, native_symbol
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.bus import Bus, Overflow
from marketflow.runtime.supervisor import ChildSpec, Restart, Supervisor, SupervisorPolicy
from marketflow.storage import make_writer, open_store
from marketflow.storage.writer import StorageWriter, TradeStore

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


class Daemon:
    """The whole running system for one configuration."""

    def __init__(self, config: Config, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.name = "daemon"
        self._ssl_context = ssl_context
        capacity = config.daemon.channel_capacity
        self.raw_bus: Bus[RawFrames] = Bus("raw")
        self.trade_bus: Bus[Trade] = Bus("trades")
        self._raw_sub = self.raw_bus.subscribe("normalizer", capacity, Overflow.BLOCK)
        self._trade_sub = self.trade_bus.subscribe("storage", capacity, Overflow.BLOCK)
        self.store: TradeStore = open_store(config.storage.url)
        self.decoders: dict[str, FrameDecoder] = {}
        self.feed_counters: dict[str, FeedCounters] = {}
        shutdown = config.daemon.shutdown_timeout_s
        children = [
            ChildSpec(
                "storage", self._make_writer, Restart.PERMANENT, shutdown, on_stop=self.trade_bus.close
            ),
            ChildSpec(
                "normalizer", self._make_normalizer, Restart.PERMANENT, shutdown, on_stop=self.raw_bus.close
            ),
        ]
        children.extend(self._feed_spec(feed) for feed in config.feeds)
        self.supervisor = Supervisor("daemon", _policy(config), children)

    def _make_writer(self) -> StorageWriter:
        return make_writer(self.config, self.store, self._trade_sub)

    def _make_normalizer(self) -> Normalizer:
        return Normalizer(self._raw_sub, self.trade_bus, self.decoders)

    def _feed_spec(self, feed: FeedConfig) -> ChildSpec:
        venue: ModuleType = exchanges.venue(feed.exchange)
        natives = [native_symbol(s) for s in feed.symbols]
        self.decoders[feed.name] = venue.FrameDecoder(
            feed.exchange, feed.market, dict(zip(natives, feed.symbols, strict=True))
        )
        counters = self.feed_counters.setdefault(feed.name, FeedCounters())
        url = venue.ws_url(feed.market, feed.ws_url)

        def make_feed() -> Feed:
            return Feed(
                name=feed.name,
                exchange=feed.exchange,
                market=feed.market,
                url=url,
                session_factory=lambda: venue.Session(feed.market, natives, feed.channels),
                bus=self.raw_bus,
                counters=counters,
                stale_timeout_s=feed.stale_timeout_s,
                ping_interval_s=feed.ping_interval_s,
                ssl_context=self._ssl_context,
            )

        return ChildSpec(feed.name, make_feed, Restart.PERMANENT, self.config.daemon.shutdown_timeout_s)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every actor; returns after `stop()` has shut them all down."""
        log.info(
            "marketflow starting",
            extra={
                "config": self.config.source or "<built-in defaults>",
                "storage": self.store.display_url,
                "feeds": [f.name for f in self.config.feeds],
            },
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.supervisor.run)
            log.info("marketflow running")
            task_status.started()
        log.info("marketflow stopped")

    async def stop(self) -> None:
        """Graceful stop: feeds first, then drain the normalizer, then flush storage."""
        await self.supervisor.stop()

    def statistics(self) -> dict[str, Any]:
        return {
            "supervisor": attrs.asdict(self.supervisor.statistics(), recurse=False),
            "buses": [self.raw_bus.statistics(), self.trade_bus.statistics()],
        }


async def serve(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT, then stop it within `daemon.shutdown_timeout_s`."""
    daemon = Daemon(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    # Reloading lands with the symbols API; until then SIGHUP must not kill the daemon.
                    log.warning("SIGHUP received: live reload is not available in this version; ignored")
                    continue
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                break
            with trio.move_on_after(config.daemon.shutdown_timeout_s) as scope:
                await daemon.stop()
            if scope.cancelled_caught:
                log.error(
                    "shutdown deadline passed; cancelling what is left",
                    extra={"shutdown_timeout_s": config.daemon.shutdown_timeout_s},
                )
                nursery.cancel_scope.cancel()
