"""OKX v5 public market data (spot, swap, futures): `VENUE` is the one object the pipeline sees.

Books come from WebSocket snapshots (`books`: 400 levels then increments; `books5`: 5-level snapshots) and
are resynced by resubscribing the instrument; a `books` stream that sends updates but no snapshot (OKX's
announced delisting of it) is aligned with a REST snapshot (`/api/v5/market/books`). The `seqId` chain
and the CRC32 checksum are checked on every message (`book.py`). Trade ids are numeric and increasing
per instrument, so a jump is a gap the backfiller fetches exactly from `/api/v5/market/history-trades`
(PROTOCOLS.md §8).
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
    RestRequest,
    Topic,
    TradeGap,
    TradeRecovery,
    Venue,
)
from marketflow.exchanges.okx.book import OkxBook, checksum
from marketflow.exchanges.okx.frames import FrameDecoder, OkxBookUpdate
from marketflow.exchanges.okx.market_data import (
    FUNDING_RATE,
    INDEX_TICKERS,
    LIQUIDATION_ORDERS,
    MARK_PRICE,
    OPEN_INTEREST,
    TICKERS,
    index_of,
)
from marketflow.exchanges.okx.rest import (
    BOOKS_PATH,
    DEFAULT_REST,
    HISTORY_PAGE,
    HISTORY_TRADES_PATH,
    INSTRUMENTS_PATH,
    REST_LIMIT,
    REST_WINDOW_S,
    books_params,
    history_params,
    instruments_params,
    parse_books,
    parse_history_trades,
    parse_instruments,
)
from marketflow.exchanges.okx.session import BOOK_CHANNELS, TRADES_CHANNEL, Session, split_topic
from marketflow.exchanges.okx.symbols import EXCHANGE, FUTURES, SPOT, SWAP, to_native, to_normalized
from marketflow.exchanges.orderbook import Synchronizer
from marketflow.exchanges.venue_base import ResubscribedBooks, VenueBase
from marketflow.model import BookUpdate, Trade, now_us

__all__ = [
    "DEFAULT_WS",
    "EXCHANGE",
    "MARKETS",
    "TOPICS_PER_CONNECTION",
    "VENUE",
    "FrameDecoder",
    "OkxBook",
    "OkxBookUpdate",
    "OkxVenue",
    "Session",
    "checksum",
]

DEFAULT_WS = "wss://ws.okx.com:8443/ws/v5/public"
TOPICS_PER_CONNECTION = 25
"""OKX advises fewer than 30 channels per connection for many book subscriptions (PROTOCOLS §8.1)."""
MAX_GAP = 20_000
"""Widest trade-id gap fetched whole: 200 pages of 100 at 20 requests per 2 s."""
_DEPTHS = (400, 5)
_ALL: tuple[Channel, ...] = ("trades", "book", "ticker", "derivatives", "liquidations")
MARKETS: Mapping[str, Market] = {
    SPOT: Market(
        SPOT,
        False,
        _DEPTHS,
        400,
        "BTC-USDT",
        "BTC-USDT",
        ("BTC-USDT", "ETH-USDT"),
        ("trades", "book", "ticker"),
    ),
    SWAP: Market(
        SWAP, True, _DEPTHS, 400, "BTC-USDT-SWAP", "BTC-USDT-PERP", ("BTC-USDT-PERP", "BTC-USD-PERP"), _ALL
    ),
    FUTURES: Market(FUTURES, False, _DEPTHS, 400, "BTC-USD-250627", "BTC-USD-20250627", (), _ALL),
}
_INST_TYPES = {SWAP: "SWAP", FUTURES: "FUTURES"}
"""`liquidation-orders` is subscribed per instrument type."""
_RECOVERY = TradeRecovery(
    ReconnectTrades.BY_ID,
    "disconnected; missed trades are recovered by trade id",
    MAX_GAP,
    "trade ids",
)
_BUDGET = RestBudget(REST_LIMIT, REST_WINDOW_S)
_CHANNELS: dict[str, Channel] = {
    TRADES_CHANNEL: "trades",
    **{c: "book" for c in BOOK_CHANNELS.values()},
    TICKERS: "ticker",
    MARK_PRICE: "derivatives",
    INDEX_TICKERS: "derivatives",
    FUNDING_RATE: "derivatives",
    OPEN_INTEREST: "derivatives",
    LIQUIDATION_ORDERS: "liquidations",
}


class OkxVenue(VenueBase, ResubscribedBooks):
    """The OKX rules behind the `Venue` contract."""

    _exchange = EXCHANGE
    _markets = MARKETS
    _recovery = _RECOVERY
    _resubscribed = "resubscribing the instrument"

    def normalize_symbol(self, market: str, symbol: str) -> str:
        self._market(market)
        return to_normalized(market, symbol)

    def native_symbol(self, market: str, symbol: str) -> str:
        self._market(market)
        return to_native(market, symbol)

    def ws_url(self, market: str, override: str | None = None) -> str:
        self._market(market)
        return override or DEFAULT_WS

    def rest_url(self, market: str, override: str | None = None) -> str:
        self._market(market)
        return (override or DEFAULT_REST).rstrip("/")

    def topic(self, market: str, channel: Channel, native: str, book_depth: int) -> str:
        if channel == "trades":
            return f"{TRADES_CHANNEL}:{native}"
        if channel != "book":
            topics = _instrument_topics(market, channel, native)
            if not topics:
                raise ValueError(f"okx {market} has no {channel!r} channel")
            return topics[0]
        try:
            return f"{BOOK_CHANNELS[book_depth]}:{native}"
        except KeyError:
            raise ValueError(
                f"okx book_depth must be one of {sorted(BOOK_CHANNELS)}, got {book_depth}"
            ) from None

    def parse_topic(self, market: str, topic: str) -> Topic | None:
        try:
            channel, native = split_topic(topic)
        except ValueError:
            return None
        kind = _CHANNELS.get(channel)
        return None if kind is None else Topic(kind, native)

    def connections(
        self,
        market: str,
        natives: Sequence[str],
        channels: Sequence[str],
        book_depth: int,
        ws_override: str | None = None,
    ) -> list[ConnectionPlan]:
        """Every topic on the public URL, at most `TOPICS_PER_CONNECTION` per connection (an instrument's
        topics stay together, so each connection's decoder knows its symbols)."""
        url = self.ws_url(market, ws_override)
        wanted: list[Channel] = [c for c in MARKETS[market].channels if c in channels]
        per_instrument = sum(
            1 if c in ("trades", "book") else len(_instrument_topics(market, c, "X-Y-SWAP")) for c in wanted
        )
        per = max(1, TOPICS_PER_CONNECTION // max(1, per_instrument))
        plans = []
        for start in range(0, len(natives), per):
            chunk = tuple(natives[start : start + per])
            topics: list[str] = []
            for c in wanted:
                for n in chunk:
                    if c in ("trades", "book"):
                        topics.append(self.topic(market, c, n, book_depth))
                    else:
                        topics.extend(_instrument_topics(market, c, n))
            if "liquidations" in wanted:  # one per connection: the whole instrument type
                topics.append(f"{LIQUIDATION_ORDERS}:{_INST_TYPES[market]}")
            suffix = "" if start == 0 else f"#{start // per + 1}"
            unique = tuple(dict.fromkeys(topics))  # two swaps on one index share `index-tickers`
            plans.append(ConnectionPlan(suffix, url, unique, frozenset(wanted), chunk))
        return plans

    def session(self, market: str, topics: Sequence[str]) -> Session:
        return Session(market, topics)

    def decoder(self, market: str, symbols: Mapping[str, str]) -> FrameDecoder:
        self._market(market)
        return FrameDecoder(EXCHANGE, market, dict(symbols))

    def synchronizer(self, market: str, depth: int | None = None) -> Synchronizer:
        self._market(market)
        return OkxBook()

    def snapshot_request(self, market: str, native: str) -> RestRequest:
        """Recovery stays `RESUBSCRIBE`; this serves a book that gets updates without a WebSocket snapshot
        (`OkxBook.needs_snapshot`)."""
        self._market(market)
        return RestRequest(BOOKS_PATH, books_params(native))

    def parse_snapshot(self, market: str, body: bytes, symbol: str, recv_ts: int) -> BookUpdate:
        self._market(market)
        return parse_books(body, EXCHANGE, symbol, recv_ts)

    async def fill_gap(self, gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
        """Pages of `history-trades` below the first id seen after the gap, down to the gap's start."""
        after = gap.next_seen
        while after > gap.first_missing:
            body = await fetch(RestRequest(HISTORY_TRADES_PATH, history_params(gap.native, after)))
            page = parse_history_trades(body, EXCHANGE, gap.symbol, now_us())
            wanted = [t for t in page if gap.first_missing <= int(t.id) < gap.next_seen]
            wanted.sort(key=lambda t: int(t.id))
            if wanted:
                yield wanted
            lowest = min((int(t.id) for t in page), default=None)
            if lowest is None or lowest >= after or len(page) < HISTORY_PAGE:
                return  # the history ends here (3 months), or the venue answered nothing older
            after = lowest

    async def catch_up(self, market: str, native: str, symbol: str, fetch: Fetch) -> list[Trade]:
        raise NotImplementedError("okx trades are backfilled by trade id, not caught up")

    def rest_budget(self, market: str) -> RestBudget:
        self._market(market)
        return _BUDGET

    async def instruments(self, market: str, natives: Sequence[str], fetch: Fetch) -> list[Instrument]:
        """`/public/instruments` for the market's `instType`, the listed `natives` only."""
        self._market(market)
        body = await fetch(RestRequest(INSTRUMENTS_PATH, instruments_params(market)))
        listed = parse_instruments(body)
        out = []
        for native in natives:
            inst = listed.get(native)
            if inst is None:
                continue
            out.append(
                Instrument(
                    native,
                    inst.amount_unit,
                    inst.value_per_contract,
                    inst.contract_currency,
                    inst.inverse,
                    inst.tick_size,
                    inst.lot_size,
                )
            )
        return out


def _instrument_topics(market: str, channel: str, native: str) -> list[str]:
    """The per-instrument topics of a market-data channel (liquidations: none, see `connections`)."""
    if channel == "ticker":
        return [f"{TICKERS}:{native}"]
    if channel == "derivatives" and market in _INST_TYPES:
        kinds = [MARK_PRICE, FUNDING_RATE, OPEN_INTEREST] if market == SWAP else [MARK_PRICE, OPEN_INTEREST]
        return [f"{k}:{native}" for k in kinds] + [f"{INDEX_TICKERS}:{index_of(native)}"]
    if channel == "liquidations" and market in _INST_TYPES:
        return [f"{LIQUIDATION_ORDERS}:{_INST_TYPES[market]}"]
    return []


VENUE: Venue = OkxVenue()
"""The OKX venue (registered in `marketflow.exchanges.VENUES`)."""
