"""The daemon's NATS roles (SPEC §13): which NATS actors run beside the others, by role; their client
library is imported only by a daemon with `[nats] servers`."""

from __future__ import annotations

from marketflow.daemon_children import Child
from marketflow.daemon_state import DaemonState


class NatsRoles(DaemonState):
    """The part of `Daemon` that fills the NATS rows of its table of children."""

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
