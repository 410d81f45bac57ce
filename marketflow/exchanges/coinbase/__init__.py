"""Coinbase Advanced Trade public market data (spot): `VENUE` is the one object the pipeline sees.

Books are the full `level2` book (no depth to choose), kept continuous by the connection's `sequence_num`
and resynced by resubscribing; trade ids are contiguous per product, so a jump (a lost message, or a
reconnect longer than the recent-trades snapshot covers) is a gap filled from the public ticker endpoint
where it still has the trades (PROTOCOLS.md §9).
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
    Topic,
    TradeGap,
    TradeRecovery,
    Venue,
)
from marketflow.exchanges.coinbase import rest
from marketflow.exchanges.coinbase.book import CoinbaseBook
from marketflow.exchanges.coinbase.frames import (
    BOOK_PREFIX,
    DEFAULT_REST,
    DEFAULT_WS,
    EXCHANGE,
    MARKET,
    TICKER_PREFIX,
    TRADES_PREFIX,
    FrameDecoder,
    Session,
    book_topic,
    check_market,
    connections,
    rest_url,
    ticker_topic,
    trade_topic,
    ws_url,
)
from marketflow.exchanges.orderbook import Synchronizer
from marketflow.exchanges.symbols import check_ascii_symbol
from marketflow.exchanges.venue_base import ResubscribedBooks, VenueBase
from marketflow.model import SymbolError, Trade, split_native

__all__ = [
    "DEFAULT_REST",
    "DEFAULT_WS",
    "EXCHANGE",
    "MARKETS",
    "VENUE",
    "CoinbaseBook",
    "CoinbaseVenue",
    "FrameDecoder",
    "Session",
    "normalize",
]

MARKETS: Mapping[str, Market] = {
    MARKET: Market(
        MARKET,
        False,
        (),
        0,
        "BTC-USD",
        "BTC-USD",
        ("BTC-USD", "ETH-USD"),
        ("trades", "book", "ticker"),
        full_book=True,
    ),
}
_RECOVERY = TradeRecovery(
    ReconnectTrades.BY_ID,
    "disconnected; missed trades are recovered by trade id (recent-trades snapshot, then ticker)",
    rest.MAX_GAP,
    "trade ids",
)


def normalize(symbol: str) -> str:
    """`BTC-USD`, `btc-usd` or `BTCUSD` → `BTC-USD` (Coinbase product ids are the normalized form)."""
    check_ascii_symbol(symbol)
    text = symbol.strip().upper()
    if not text:
        raise SymbolError("empty symbol")
    parts = text.split("-") if "-" in text else list(split_native(text))
    if len(parts) != 2 or not all(p.isalnum() and p.isascii() for p in parts):
        raise SymbolError(f"{symbol!r} is not a coinbase product like BTC-USD")
    return f"{parts[0]}-{parts[1]}"


class CoinbaseVenue(VenueBase, ResubscribedBooks):
    """The Coinbase Advanced Trade rules behind the `Venue` contract. Books are re-snapshotted by
    resubscribing level2: the REST book (`/market/product_book`) has no sequence number to splice against
    (§9.3)."""

    _exchange = EXCHANGE
    _markets = MARKETS
    _recovery = _RECOVERY
    _resubscribed = "resubscribing level2"

    def normalize_symbol(self, market: str, symbol: str) -> str:
        check_market(market)
        return normalize(symbol)

    def native_symbol(self, market: str, symbol: str) -> str:
        check_market(market)
        return normalize(symbol)

    def ws_url(self, market: str, override: str | None = None) -> str:
        return ws_url(market, override)

    def rest_url(self, market: str, override: str | None = None) -> str:
        return rest_url(market, override)

    def topic(self, market: str, channel: Channel, native: str, book_depth: int) -> str:
        if channel == "trades":
            return trade_topic(native)
        return ticker_topic(native) if channel == "ticker" else book_topic(native)

    def parse_topic(self, market: str, topic: str) -> Topic | None:
        if topic.startswith(TRADES_PREFIX):
            return Topic("trades", topic[len(TRADES_PREFIX) :])
        if topic.startswith(BOOK_PREFIX):
            return Topic("book", topic[len(BOOK_PREFIX) :])
        if topic.startswith(TICKER_PREFIX):
            return Topic("ticker", topic[len(TICKER_PREFIX) :])
        return None

    def connections(
        self,
        market: str,
        natives: Sequence[str],
        channels: Sequence[str],
        book_depth: int,
        ws_override: str | None = None,
    ) -> list[ConnectionPlan]:
        return connections(market, natives, channels, ws_override)

    def session(self, market: str, topics: Sequence[str]) -> Session:
        return Session(market, topics)

    def decoder(self, market: str, symbols: Mapping[str, str]) -> FrameDecoder:
        check_market(market)
        return FrameDecoder(EXCHANGE, market, dict(symbols))

    def synchronizer(self, market: str) -> Synchronizer:
        check_market(market)
        return CoinbaseBook()

    def book_recovery(self, market: str) -> BookRecovery:
        check_market(market)
        return BookRecovery.RESUBSCRIBE

    def fill_gap(self, gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
        return rest.fill_gap(gap, fetch)

    async def catch_up(self, market: str, native: str, symbol: str, fetch: Fetch) -> list[Trade]:
        check_market(market)
        return await rest.catch_up(native, symbol, EXCHANGE, fetch)

    def rest_budget(self, market: str) -> RestBudget:
        check_market(market)
        return rest.BUDGET


VENUE: Venue = CoinbaseVenue()
"""The Coinbase venue (registered in `marketflow.exchanges.VENUES`)."""
