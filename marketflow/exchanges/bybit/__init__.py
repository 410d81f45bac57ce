"""Bybit v5 public market data (spot, linear perpetuals): `VENUE` is the one object the pipeline sees.

Books come from WebSocket snapshots and are resynced by resubscribing; trade ids carry no order, so a
reconnect is caught up from `/v5/market/recent-trade` (PROTOCOLS.md §1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from marketflow.exchanges.base import (
    Channel,
    ConnectionPlan,
    Fetch,
    Market,
    ReconnectTrades,
    RestBudget,
    Topic,
    TradeGap,
    TradeRecovery,
    Venue,
)
from marketflow.exchanges.bybit.book import BybitBook
from marketflow.exchanges.bybit.frames import (
    DEFAULT_REST,
    DEFAULT_WS,
    HEARTBEAT,
    LIQUIDATION_PREFIX,
    MAX_ARGS_PER_REQUEST,
    RECENT_IDS,
    RECENT_SPAN_US,
    TICKER_PREFIX,
    FrameDecoder,
    Session,
    book_topic,
    connections,
    liquidation_topic,
    rest_url,
    ticker_topic,
    trade_topic,
    ws_url,
)
from marketflow.exchanges.bybit.rest import (
    BUDGET,
    RECENT_TRADE_LIMIT,
    RECENT_TRADE_PATH,
    parse_recent_trades,
    recent_trades_request,
)
from marketflow.exchanges.orderbook import Synchronizer
from marketflow.exchanges.venue_base import CompactSymbolVenue, ResubscribedBooks
from marketflow.model import Trade, now_us

__all__ = [
    "DEFAULT_REST",
    "DEFAULT_WS",
    "EXCHANGE",
    "HEARTBEAT",
    "MARKETS",
    "MAX_ARGS_PER_REQUEST",
    "RECENT_IDS",
    "RECENT_SPAN_US",
    "RECENT_TRADE_LIMIT",
    "RECENT_TRADE_PATH",
    "VENUE",
    "BybitBook",
    "BybitVenue",
    "FrameDecoder",
    "Session",
    "book_topic",
    "connections",
    "parse_recent_trades",
    "rest_url",
    "trade_topic",
    "ws_url",
]

EXCHANGE = "bybit"
_DEPTHS = (1, 50, 200, 1000)
_SPOT_DEFAULTS = ("BTC-USDT", "ETH-USDT")
_PERP_DEFAULTS = ("BTC-USDT-PERP", "ETH-USDT-PERP")
MARKETS: Mapping[str, Market] = {
    "spot": Market(
        "spot", False, _DEPTHS, 50, "BTCUSDT", "BTC-USDT", _SPOT_DEFAULTS, ("trades", "book", "ticker")
    ),
    "linear": Market(
        "linear",
        True,
        _DEPTHS,
        50,
        "BTCUSDT",
        "BTC-USDT-PERP",
        _PERP_DEFAULTS,
        ("trades", "book", "ticker", "derivatives", "liquidations"),
    ),
}
_TRADE_PREFIX = "publicTrade."
_BOOK_PREFIX = "orderbook."
_RECOVERY = TradeRecovery(ReconnectTrades.CATCH_UP, "disconnected")


class BybitVenue(CompactSymbolVenue, ResubscribedBooks):
    """The Bybit rules behind the `Venue` contract."""

    _exchange = EXCHANGE
    _markets = MARKETS
    _recovery = _RECOVERY

    def ws_url(self, market: str, override: str | None = None) -> str:
        return ws_url(market, override)

    def rest_url(self, market: str, override: str | None = None) -> str:
        return rest_url(market, override)

    def topic(self, market: str, channel: Channel, native: str, book_depth: int) -> str:
        if channel == "trades":
            return trade_topic(native)
        if channel == "book":
            return book_topic(native, book_depth)
        if channel == "liquidations":
            return liquidation_topic(native)
        return ticker_topic(native)  # ticker and derivatives share `tickers.{symbol}`

    def parse_topic(self, market: str, topic: str) -> Topic | None:
        if topic.startswith(_TRADE_PREFIX):
            return Topic("trades", topic[len(_TRADE_PREFIX) :])
        if topic.startswith(_BOOK_PREFIX):
            return Topic("book", topic.rpartition(".")[2])
        if topic.startswith(TICKER_PREFIX):
            return Topic("ticker", topic[len(TICKER_PREFIX) :])
        if topic.startswith(LIQUIDATION_PREFIX):
            return Topic("liquidations", topic[len(LIQUIDATION_PREFIX) :])
        return None

    def connections(
        self,
        market: str,
        natives: Sequence[str],
        channels: Sequence[str],
        book_depth: int,
        ws_override: str | None = None,
    ) -> list[ConnectionPlan]:
        return connections(market, natives, channels, book_depth, ws_override)

    def session(self, market: str, topics: Sequence[str]) -> Session:
        return Session(market, topics)

    def decoder(self, market: str, symbols: Mapping[str, str]) -> FrameDecoder:
        self._market(market)
        return FrameDecoder(EXCHANGE, market, dict(symbols))

    def synchronizer(self, market: str, depth: int | None = None) -> Synchronizer:
        return BybitBook()

    def fill_gap(self, gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
        # Bybit ids carry no order, so the decoder never reports an id gap.
        raise NotImplementedError("bybit trades are caught up after a reconnect, not by id")

    async def catch_up(self, market: str, native: str, symbol: str, fetch: Fetch) -> list[Trade]:
        body = await fetch(recent_trades_request(market, native))
        return parse_recent_trades(body, EXCHANGE, symbol, now_us())

    def rest_budget(self, market: str) -> RestBudget:
        self._market(market)
        return BUDGET


VENUE: Venue = BybitVenue()
"""The Bybit venue (registered in `marketflow.exchanges.VENUES`)."""
