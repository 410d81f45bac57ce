"""Binance spot and USD-M public market data: `VENUE` is the one object the pipeline sees.

Books are seeded from REST depth snapshots and bridged to the diff-depth stream; aggregate trade ids are
contiguous, so missed trades are found by id and fetched exactly (PROTOCOLS.md §2, §3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from marketflow.exchanges.base import (
    BookRecovery,
    Channel,
    ConnectionPlan,
    Fetch,
    Market,
    ReconnectTrades,
    RestBudget,
    RestRequest,
    Topic,
    TradeGap,
    TradeRecovery,
    Venue,
)
from marketflow.exchanges.binance import rest
from marketflow.exchanges.binance.book import BinanceSpotBook, BinanceUsdmBook
from marketflow.exchanges.binance.frames import (
    DEFAULT_REST,
    DEFAULT_WS,
    DEPTH_STREAM,
    MAX_STREAMS_PER_CONNECTION,
    STREAM_CHANNELS,
    TRADE_STREAM,
    FrameDecoder,
    Session,
    channel_streams,
    connections,
    depth_topic,
    rest_url,
    stream_topic,
    trade_topic,
    ws_url,
)
from marketflow.exchanges.binance.rest import (
    AGG_TRADES_PATH,
    AGG_TRADES_WEIGHT,
    DEPTH_PATH,
    SNAPSHOT_LIMIT,
    WEIGHT_PER_MINUTE,
    depth_weight,
    parse_rest_agg_trades,
    parse_rest_depth,
)
from marketflow.exchanges.orderbook import Synchronizer
from marketflow.exchanges.venue_base import CompactSymbolVenue
from marketflow.model import BookUpdate, Trade

__all__ = [
    "AGG_TRADES_PATH",
    "AGG_TRADES_WEIGHT",
    "DEFAULT_REST",
    "DEFAULT_WS",
    "DEPTH_PATH",
    "DEPTH_STREAM",
    "EXCHANGE",
    "MARKETS",
    "MAX_STREAMS_PER_CONNECTION",
    "SNAPSHOT_LIMIT",
    "TRADE_STREAM",
    "VENUE",
    "WEIGHT_PER_MINUTE",
    "BinanceSpotBook",
    "BinanceUsdmBook",
    "BinanceVenue",
    "FrameDecoder",
    "Session",
    "connections",
    "depth_topic",
    "depth_weight",
    "parse_rest_agg_trades",
    "parse_rest_depth",
    "rest_url",
    "trade_topic",
    "ws_url",
]

EXCHANGE = "binance"
_DEPTHS = (5, 10, 20, 50, 100, 500, 1000, 5000)
_SPOT_DEFAULTS = ("BTC-USDT", "ETH-USDT")
_PERP_DEFAULTS = ("BTC-USDT-PERP", "ETH-USDT-PERP")
MARKETS: Mapping[str, Market] = {
    "spot": Market(
        "spot", False, _DEPTHS, 50, "BTCUSDT", "BTC-USDT", _SPOT_DEFAULTS, ("trades", "book", "ticker")
    ),
    "usdm": Market(
        "usdm",
        True,
        _DEPTHS,
        50,
        "BTCUSDT",
        "BTC-USDT-PERP",
        _PERP_DEFAULTS,
        ("trades", "book", "ticker", "derivatives", "liquidations"),
        (rest.OPEN_INTEREST_POLL,),
    ),
}
# A gap wider than this is not fetched whole (100 requests of 1000 trades).
MAX_GAP = 100_000
_RECOVERY = TradeRecovery(
    ReconnectTrades.BY_ID,
    "disconnected; missed trades are recovered by aggregate id",
    max_gap=MAX_GAP,
    id_name="aggregate trade ids",
)


class BinanceVenue(CompactSymbolVenue):
    """The Binance rules behind the `Venue` contract."""

    _exchange = EXCHANGE
    _markets = MARKETS
    _recovery = _RECOVERY

    def ws_url(self, market: str, override: str | None = None) -> str:
        return ws_url(market, override)

    def rest_url(self, market: str, override: str | None = None) -> str:
        return rest_url(market, override)

    def topic(self, market: str, channel: Channel, native: str, book_depth: int) -> str:
        streams = channel_streams(market, channel)
        if not streams:
            raise ValueError(f"binance {market} has no {channel!r} channel")
        return stream_topic(native, streams[0])

    def parse_topic(self, market: str, topic: str) -> Topic | None:
        stream, _, kind = topic.partition("@")
        if kind.startswith("depth"):
            return Topic("book", stream.upper())
        channel = STREAM_CHANNELS.get(kind)
        if channel == "trades":
            return Topic("trades", stream.upper())
        if channel == "ticker":
            return Topic("ticker", stream.upper())
        if channel == "derivatives":
            return Topic("derivatives", stream.upper())
        if channel == "liquidations":
            return Topic("liquidations", stream.upper())
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
        return FrameDecoder(EXCHANGE, market, dict(symbols))

    def synchronizer(self, market: str, depth: int | None = None) -> Synchronizer:
        return BinanceUsdmBook() if self._market(market).name == "usdm" else BinanceSpotBook()

    def book_recovery(self, market: str) -> BookRecovery:
        return BookRecovery.REST_SNAPSHOT

    def snapshot_request(self, market: str, native: str) -> RestRequest:
        self._market(market)
        return rest.depth_request(market, native)

    def parse_snapshot(self, market: str, body: bytes, symbol: str, recv_ts: int) -> BookUpdate:
        return parse_rest_depth(body, EXCHANGE, symbol, recv_ts)

    def fill_gap(self, gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
        return rest.fill_gap(gap, fetch)

    async def catch_up(self, market: str, native: str, symbol: str, fetch: Fetch) -> list[Trade]:
        raise NotImplementedError("binance trades are recovered by aggregate id, not caught up")

    def rest_budget(self, market: str) -> RestBudget:
        self._market(market)
        return rest.budget(market)


VENUE: Venue = BinanceVenue()
"""The Binance venue (registered in `marketflow.exchanges.VENUES`)."""
