"""Kraken WebSocket v2 spot market data: `VENUE` is the one object the pipeline sees.

Books come from WebSocket snapshots and are checked on every message by the CRC32 of the top 10 rendered
at the pair's precisions (from the `instrument` channel); a mismatch resubscribes that pair alone. Trade
ids are integers increasing by one per pair: a jump is a gap the backfiller fetches exactly from
`/0/public/Trades`, and the subscription's trade snapshot (the last 50) closes short reconnect gaps by
itself (PROTOCOLS.md §10).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from marketflow.exchanges.base import (
    Channel,
    ConnectionPlan,
    Fetch,
    Instrument,
    Market,
    ReconnectTrades,
    RestBudget,
    Topic,
    TradeGap,
    TradeRecovery,
    Venue,
)
from marketflow.exchanges.kraken.book import DEPTHS, KrakenBook, KrakenBookUpdate, checksum, render
from marketflow.exchanges.kraken.frames import (
    BOOK,
    DEFAULT_WS,
    TICKER,
    TRADE,
    FrameDecoder,
    Session,
    book_topic,
    split_topic,
    ticker_topic,
    trade_topic,
)
from marketflow.exchanges.kraken.rest import (
    BUDGET,
    DEFAULT_REST,
    TRADES_PAGE,
    asset_pairs_request,
    parse_asset_pairs,
    parse_trades,
    trades_request,
)
from marketflow.exchanges.kraken.symbols import EXCHANGE, SPOT, to_native, to_normalized
from marketflow.exchanges.orderbook import Synchronizer
from marketflow.exchanges.venue_base import ResubscribedBooks, VenueBase
from marketflow.model import Trade, now_us

__all__ = [
    "DEFAULT_REST",
    "DEFAULT_WS",
    "EXCHANGE",
    "MARKETS",
    "VENUE",
    "FrameDecoder",
    "KrakenBook",
    "KrakenBookUpdate",
    "KrakenVenue",
    "Session",
    "checksum",
    "render",
]

MAX_GAP = 10_000
"""Widest trade-id gap fetched whole: 10 pages of 1000 at one request per second."""
MARKETS: Mapping[str, Market] = {
    SPOT: Market(
        SPOT, False, DEPTHS, 10, "BTC/USD", "BTC-USD", ("BTC-USD", "ETH-USD"), ("trades", "book", "ticker")
    ),
}
_RECOVERY = TradeRecovery(
    ReconnectTrades.BY_ID,
    "disconnected; missed trades are recovered by trade id",
    MAX_GAP,
    "trade ids",
)
_CHANNELS: dict[str, Channel] = {TRADE: "trades", BOOK: "book", TICKER: "ticker"}


def _in_gap(gap: TradeGap, trade_id: int) -> bool:
    return gap.first_missing <= trade_id < gap.next_seen


class KrakenVenue(VenueBase, ResubscribedBooks):
    """The Kraken v2 rules behind the `Venue` contract."""

    _exchange = EXCHANGE
    _markets = MARKETS
    _recovery = _RECOVERY
    _resubscribed = "resubscribing the pair"

    def normalize_symbol(self, market: str, symbol: str) -> str:
        self._market(market)
        return to_normalized(symbol)

    def native_symbol(self, market: str, symbol: str) -> str:
        self._market(market)
        return to_native(symbol)

    def ws_url(self, market: str, override: str | None = None) -> str:
        self._market(market)
        return override or DEFAULT_WS

    def rest_url(self, market: str, override: str | None = None) -> str:
        self._market(market)
        return (override or DEFAULT_REST).rstrip("/")

    def topic(self, market: str, channel: Channel, native: str, book_depth: int) -> str:
        if channel == "trades":
            return trade_topic(native)
        if channel == "ticker":
            return ticker_topic(native)
        if channel != "book":
            raise ValueError(f"kraken spot has no {channel!r} channel; it offers trades, book, ticker")
        if book_depth not in DEPTHS:
            raise ValueError(f"kraken book_depth must be one of {list(DEPTHS)}, got {book_depth}")
        return book_topic(native, book_depth)

    def parse_topic(self, market: str, topic: str) -> Topic | None:
        try:
            channel, _, native = split_topic(topic)
        except ValueError:
            return None
        return Topic(_CHANNELS[channel], native)

    def connections(
        self,
        market: str,
        natives: Sequence[str],
        channels: Sequence[str],
        book_depth: int,
        ws_override: str | None = None,
    ) -> list[ConnectionPlan]:
        """One connection per feed: every topic on the v2 URL (Kraken publishes no per-connection cap)."""
        wanted = [c for c in MARKETS[market].channels if c in channels]
        topics = tuple(self.topic(market, c, n, book_depth) for c in wanted for n in natives)
        url = self.ws_url(market, ws_override)
        return [ConnectionPlan("", url, topics, frozenset(wanted), tuple(natives))]

    def session(self, market: str, topics: Sequence[str]) -> Session:
        self._market(market)
        return Session(market, topics)

    def decoder(self, market: str, symbols: Mapping[str, str]) -> FrameDecoder:
        self._market(market)
        return FrameDecoder(EXCHANGE, market, dict(symbols))

    def synchronizer(self, market: str, depth: int | None = None) -> Synchronizer:
        self._market(market)
        return KrakenBook(depth)

    async def fill_gap(self, gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
        """Pages of `/0/public/Trades` from just before the last trade seen, until the gap is covered."""
        since = gap.since_ts * 1000 - 1
        found: set[int] = set()
        while True:
            page = parse_trades(
                await fetch(trades_request(gap.native, since)), EXCHANGE, gap.symbol, now_us()
            )
            wanted = [
                t
                for t in page.trades
                if gap.first_missing <= int(t.id) < gap.next_seen and int(t.id) not in found
            ]
            wanted.sort(key=lambda t: int(t.id))
            if wanted:
                found.update(int(t.id) for t in wanted)
                yield wanted
            highest = max((int(t.id) for t in page.trades), default=None)
            if (
                highest is None
                or highest >= gap.next_seen - 1
                or len(found) >= gap.next_seen - gap.first_missing
                or page.last - 1 <= since
                or len(page.trades) < TRADES_PAGE
            ):
                return  # covered, or the venue has nothing newer
            # One ns back: trades sharing the page's last time are asked again, not skipped (ids dedupe).
            since = page.last - 1

    async def catch_up(self, market: str, native: str, symbol: str, fetch: Fetch) -> list[Trade]:
        raise NotImplementedError("kraken trades are backfilled by trade id, not caught up")

    def rest_budget(self, market: str) -> RestBudget:
        self._market(market)
        return BUDGET

    async def instruments(self, market: str, natives: Sequence[str], fetch: Fetch) -> list[Instrument]:
        """`/0/public/AssetPairs` of `natives`: tick and lot size (amounts are base units)."""
        self._market(market)
        if not natives:
            return []
        listed = parse_asset_pairs(await fetch(asset_pairs_request(list(natives))))
        return [
            Instrument(n, tick_size=listed[n].tick_size, lot_size=listed[n].lot_size)
            for n in natives
            if n in listed
        ]


VENUE: Venue = KrakenVenue()
"""The Kraken venue (registered in `marketflow.exchanges.VENUES`)."""
