"""Bybit v5 public streams: spot and linear `publicTrade` and `orderbook.{depth}` (PROTOCOLS.md §1).

The `FrameDecoder` (the hot path). Markets, URLs, topics and connections are in `streams.py`, the
per-connection `Session` in `session.py`; both are re-exported here.

Frames are decoded straight into small Structs: first the envelope with `data` left raw, then `data` by the
topic's kind. Spot trade ids are numeric strings above 2^53 and stay strings; linear ids are UUIDs, so
unlike Binance there is no id continuity to check: after a reconnect the feed's missed trades are fetched
from `/v5/market/recent-trade` and admitted only if newer than the last trade seen and not seen already.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import DecodeCounters, Decoded
from marketflow.exchanges.bybit.session import HEARTBEAT, MAX_ARGS_PER_REQUEST, Session
from marketflow.exchanges.bybit.streams import (
    _BOOK_PREFIX,
    _TRADE_PREFIX,
    DEFAULT_REST,
    DEFAULT_WS,
    EXCHANGE,
    LIQUIDATION_PREFIX,
    MARKET_NAMES,
    TICKER_PREFIX,
    book_topic,
    connections,
    liquidation_topic,
    rest_url,
    ticker_topic,
    trade_topic,
    ws_url,
)
from marketflow.exchanges.orderbook import bad_amount, shared_decimal
from marketflow.exchanges.trade_values import positive_decimal
from marketflow.exchanges.venue_base import count_malformed
from marketflow.model import BookUpdate, DerivativesTick, Liquidation, Ticker, Trade, liquidation_id

# Trade ids remembered per symbol, in two generations, to tell backfilled trades we already have from new
# ones. Backfill admits only trades younger than its disconnect time less 10 s (backfill.CLOCK_MARGIN_US),
# so a generation turns over once it spans RECENT_SPAN_US of exchange time — both together always hold
# the last RECENT_SPAN_US — or once it holds RECENT_IDS ids, whichever comes first: a quiet symbol keeps a
# few hundred ids, a burst at most 2 x RECENT_IDS (20k x 2 ids x 100 symbols was ~400 MB of id strings and
# set slots; 1500 x 2 was ~30 MB, most of a 100-symbol daemon's data).
RECENT_IDS = 1_500
RECENT_SPAN_US = 20_000_000
DECIMAL_INTERN_MAX = 20_000
"""Distinct price/size strings kept per decoder before the table starts over: at most ~4 MB (50k was a
10 MB saw-tooth in a 100-symbol daemon); a walking price revisits recent values, so hits stay high."""

log = logging.getLogger("marketflow.exchanges.bybit")

__all__ = [
    "DECIMAL_INTERN_MAX",
    "DEFAULT_REST",
    "DEFAULT_WS",
    "EXCHANGE",
    "HEARTBEAT",
    "LIQUIDATION_PREFIX",
    "MARKET_NAMES",
    "MAX_ARGS_PER_REQUEST",
    "RECENT_IDS",
    "RECENT_SPAN_US",
    "TICKER_PREFIX",
    "FrameDecoder",
    "Session",
    "book_topic",
    "connections",
    "liquidation_topic",
    "rest_url",
    "ticker_topic",
    "trade_topic",
    "ws_url",
]


class _Envelope(msgspec.Struct):
    topic: str
    data: msgspec.Raw
    ts: int = 0
    type: str = "snapshot"


class _Trade(msgspec.Struct):
    T: int
    s: str
    S: Literal["Buy", "Sell"]
    v: str  # decimal strings, made Decimal through the decoder's intern table (see FrameDecoder._decimal)
    p: str
    i: str


class _TradeFrame(msgspec.Struct):
    """A `publicTrade` frame in one pass (the envelope and its trades), for the hot path."""

    topic: str
    data: list[_Trade]


class _Book(msgspec.Struct):
    s: str
    b: list[tuple[str, Decimal]]  # prices made shared, checked Decimals by `shared_decimal`
    a: list[tuple[str, Decimal]]
    u: int
    seq: int = 0


class _Tickers(msgspec.Struct):
    """`tickers` data: a linear delta carries only the fields that changed (absent: None)."""

    lastPrice: str | None = None
    volume24h: str | None = None
    bid1Price: str | None = None
    bid1Size: str | None = None
    ask1Price: str | None = None
    ask1Size: str | None = None
    markPrice: str | None = None
    indexPrice: str | None = None
    fundingRate: str | None = None
    nextFundingTime: str | None = None
    openInterest: str | None = None
    openInterestValue: str | None = None


class _Liquidation(msgspec.Struct):
    """`allLiquidation` entry: `S` is the side of the liquidated *position* (`Buy`: a long)."""

    T: int
    S: Literal["Buy", "Sell"]
    v: str
    p: str


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_trades_decoder = msgspec.json.Decoder(list[_Trade])
_trade_frame_decoder = msgspec.json.Decoder(_TradeFrame)
_TRADE_FRAME_START = b'{"topic":"publicTrade.'
"""How every trade frame seen live begins; others (other key orders) take the two-pass path."""
_book_decoder = msgspec.json.Decoder(_Book)
_tickers_decoder = msgspec.json.Decoder(_Tickers)
_liquidations_decoder = msgspec.json.Decoder(list[_Liquidation])
# The forced order closing a long sells: the opposite of the position side Bybit sends.
_FORCED_SIDE: dict[str, Literal["buy", "sell"]] = {"Buy": "sell", "Sell": "buy"}


class _BookFrame(msgspec.Struct):
    """An `orderbook` frame in one pass (envelope and book), for the hot path."""

    topic: str
    data: _Book
    ts: int = 0
    type: str = "snapshot"


_book_frame_decoder = msgspec.json.Decoder(_BookFrame)


class _TickersFrame(msgspec.Struct):
    """A `tickers` frame in one pass (envelope and data), for the hot path."""

    topic: str
    data: _Tickers
    ts: int = 0
    type: str = "snapshot"


_tickers_frame_decoder = msgspec.json.Decoder(_TickersFrame)
_TICKERS_FRAME_START = b'{"topic":"tickers.'
"""How every ticker frame seen live begins; others take the two-pass path."""
_BOOK_FRAME_START = b'{"topic":"orderbook.'
"""How every book frame seen live begins; others take the two-pass path."""
_SIDES: dict[str, Literal["buy", "sell"]] = {"Buy": "buy", "Sell": "sell"}
_NO_DERIVATIVES = (None, None, None, None, None)


def _exact(text: str) -> Decimal:
    """The exact Decimal of a decimal string, not shared (for values that seldom repeat)."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise msgspec.DecodeError(f"not a decimal: {text[:40]!r}") from None
    if not value.is_finite():
        raise msgspec.DecodeError(f"not a finite decimal: {text[:40]!r}")
    return value


class _RecentIds:
    """One symbol's recent trade ids: the generation being filled, the one before, and the exchange time
    (µs) the current one started at."""

    __slots__ = ("current", "previous", "since")

    def __init__(self) -> None:
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self.since: int | None = None


class _TradeTopic:
    """One followed trade topic: its symbols, its recent ids, and its newest trade time (also kept in
    `FrameDecoder.last_ts` for backfill)."""

    __slots__ = ("last_ts", "native", "recent", "symbol")

    def __init__(self, native: str, symbol: str, recent: _RecentIds, last_ts: int) -> None:
        self.native = native
        self.symbol = symbol
        self.recent = recent
        self.last_ts = last_ts


class FrameDecoder:
    """Bybit data frames → normalized trades and book updates of one feed (native → normalized symbols)."""

    def __init__(self, exchange: str, market: str, symbols: dict[str, str]) -> None:
        self.exchange = exchange
        self.market = market
        self.symbols = dict(symbols)
        self.counters = DecodeCounters()
        # Per native symbol: the newest trade time seen and the ids seen recently, for backfill.
        self.last_ts: dict[str, int] = {}
        # Ids seen recently per native symbol, in two generations (the older one is dropped when the
        # newer fills or spans RECENT_SPAN_US): a duplicate — live or backfilled — is dropped, at two set
        # lookups and one insert per trade, with no per-trade bookkeeping to expire old ids.
        self._seen: dict[str, _RecentIds] = {}
        self._decimals: dict[str, Decimal] = {}
        # Trade prices and amounts have their own table: every entry checked by `positive_decimal` (finite,
        # > 0), so a hit needs no check; `_decimals` holds the rest (a funding rate may be negative).
        self._trade_values: dict[str, Decimal] = {}
        # Book (and ticker quote) prices have their own table: every entry checked by `shared_decimal`
        # (finite, >= 0), unlike `_decimals` (funding rates: a negative value is legitimate there).
        self._book_prices: dict[str, Decimal] = {}
        self._book_topics: dict[str, str] = {}
        """`orderbook.{depth}.{native}` → normalized symbol, filled on first sight."""
        # Per trade topic as sent (`publicTrade.BTCUSDT`): one lookup per frame finds all of the above.
        self._trade_topics: dict[str, _TradeTopic] = {}

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None:
        counters = self.counters
        counters.frames += len(frames)
        symbols = self.symbols
        topics = self._trade_topics
        known = self._trade_values
        exchange = self.exchange
        kept = duplicates = 0
        append = out.trades.append
        for frame in frames:
            try:
                if frame.startswith(_TRADE_FRAME_START):
                    whole = _trade_frame_decoder.decode(frame)
                    followed = topics.get(whole.topic)
                    if followed is None:
                        followed = self._trade_topic(whole.topic[len(_TRADE_PREFIX) :])
                        if followed is None:
                            counters.unknown_topics += 1
                            continue
                        topics[whole.topic] = followed
                    data = whole.data
                    if len(data) != 1:
                        self._trades(followed, data, recv_ts, out)
                        continue
                    # One trade per frame, what a busy market mostly sends: the same steps as
                    # `_trades`, inline.
                    t = data[0]
                    price = known.get(t.p) or positive_decimal(known, t.p, "price", DECIMAL_INTERN_MAX)
                    amount = known.get(t.v) or positive_decimal(known, t.v, "amount", DECIMAL_INTERN_MAX)
                    ts = t.T * 1000
                    trade = Trade(exchange, followed.symbol, t.i, price, amount, _SIDES[t.S], ts, recv_ts)
                    recent = followed.recent
                    if t.i in recent.current or t.i in recent.previous:
                        duplicates += 1
                    else:
                        recent.current.add(t.i)
                        append(trade)
                        kept += 1
                    since = recent.since
                    if since is None:
                        since = recent.since = ts
                    if len(recent.current) >= RECENT_IDS or ts - since >= RECENT_SPAN_US:
                        recent.previous, recent.current, recent.since = recent.current, set(), ts
                    if ts > followed.last_ts:
                        followed.last_ts = self.last_ts[followed.native] = ts
                    continue
                if frame.startswith(_BOOK_FRAME_START):
                    book = _book_frame_decoder.decode(frame)
                    self._book(book.topic, book.type, book.ts, book.data, recv_ts, out)
                    continue
                if frame.startswith(_TICKERS_FRAME_START):
                    tick = _tickers_frame_decoder.decode(frame)
                    symbol = symbols.get(tick.topic[len(TICKER_PREFIX) :])
                    if symbol is None:
                        counters.unknown_topics += 1
                        continue
                    self._tickers(symbol, tick.type, tick.ts, tick.data, recv_ts, out)
                    continue
                env = _envelope_decoder.decode(frame)
                topic = env.topic
                if topic.startswith(_TRADE_PREFIX):
                    trade_topic = self._trade_topic(topic[len(_TRADE_PREFIX) :])
                    if trade_topic is None:
                        counters.unknown_topics += 1
                        continue
                    self._trades(trade_topic, _trades_decoder.decode(env.data), recv_ts, out)
                elif topic.startswith(_BOOK_PREFIX):
                    self._book(topic, env.type, env.ts, _book_decoder.decode(env.data), recv_ts, out)
                elif topic.startswith(TICKER_PREFIX):
                    symbol = symbols.get(topic[len(TICKER_PREFIX) :])
                    if symbol is None:
                        counters.unknown_topics += 1
                        continue
                    self._tickers(symbol, env.type, env.ts, _tickers_decoder.decode(env.data), recv_ts, out)
                elif topic.startswith(LIQUIDATION_PREFIX):
                    symbol = symbols.get(topic[len(LIQUIDATION_PREFIX) :])
                    if symbol is None:
                        counters.unknown_topics += 1
                        continue
                    self._liquidations(symbol, env, recv_ts, out)
                else:
                    counters.ignored += 1
            except msgspec.DecodeError as exc:
                count_malformed(log, counters, "bybit", self.market, exc, frame)
        counters.trades += kept
        counters.duplicates += duplicates

    def _tickers(self, symbol: str, kind: str, ts_ms: int, t: _Tickers, recv_ts: int, out: Decoded) -> None:
        """A snapshot or a delta (linear: only changed fields) -> a partial `Ticker` and, on linear, a
        partial `DerivativesTick`; a field absent from a delta stays None (kept downstream). Every value
        is converted before anything is kept: a bad one rejects the whole frame."""
        snapshot = kind == "snapshot"
        ts = ts_ms * 1000
        dec = self._maybe_decimal
        ticker = None
        bid, bid_size, ask, ask_size = t.bid1Price, t.bid1Size, t.ask1Price, t.ask1Size
        last, volume = t.lastPrice, t.volume24h
        if (
            snapshot
            or bid is not None
            or bid_size is not None
            or ask is not None
            or ask_size is not None
            or last is not None
            or volume is not None
        ):
            # Prices and sizes repeat: one shared object each, the book's (its checked table). The 24 h
            # volume changes with every trade: a fresh Decimal, kept out of the shared table (it would
            # only crowd the book's prices out).
            get = self._book_prices.get  # a hit is one lookup (None and "0" miss and take `quote`)
            quote = self._quote
            ticker = Ticker(
                self.exchange,
                symbol,
                ts,
                recv_ts,
                get(bid) or quote(bid),  # type: ignore[arg-type]
                get(bid_size) or quote(bid_size),  # type: ignore[arg-type]
                get(ask) or quote(ask),  # type: ignore[arg-type]
                get(ask_size) or quote(ask_size),  # type: ignore[arg-type]
                get(last) or quote(last),  # type: ignore[arg-type]
                None if volume is None else _exact(volume),
                snapshot,
            )
        derivs = None
        fields = (t.markPrice, t.indexPrice, t.fundingRate, t.openInterest, t.openInterestValue)
        if self.market == "linear" and (
            snapshot or t.nextFundingTime is not None or fields != _NO_DERIVATIVES
        ):
            funding_time = None
            if t.nextFundingTime is not None:
                try:
                    funding_time = int(t.nextFundingTime) * 1000
                except ValueError:
                    raise msgspec.DecodeError(f"not a time: {t.nextFundingTime[:40]!r}") from None
            mark, index, rate, oi, oi_value = (dec(v) for v in fields)
            derivs = DerivativesTick(
                self.exchange, symbol, ts, recv_ts, mark, index, rate, funding_time, oi, oi_value, snapshot
            )
        if ticker is not None:
            out.tickers.append(ticker)
            self.counters.tickers += 1
        if derivs is not None:
            out.derivatives.append(derivs)
            self.counters.derivatives += 1

    def _liquidations(self, symbol: str, env: _Envelope, recv_ts: int, out: Decoded) -> None:
        rows = _liquidations_decoder.decode(env.data)
        made = [
            Liquidation(
                self.exchange,
                symbol,
                liquidation_id(r.T, r.S, r.p, r.v),
                _FORCED_SIDE[r.S],
                self._decimal(r.p),
                self._decimal(r.v),
                r.T * 1000,
                recv_ts,
            )
            for r in rows
        ]
        out.liquidations.extend(made)
        self.counters.liquidations += len(made)

    def _quote(self, text: str | None) -> Decimal | None:
        """A ticker's price or size: the book's shared, checked object (None: not in this message)."""
        return None if text is None else shared_decimal(self._book_prices, text)

    def _maybe_decimal(self, text: str | None) -> Decimal | None:
        if text is None:
            return None
        value = self._decimals.get(text)
        return self._decimal(text) if value is None else value

    def _book(self, topic: str, kind: str, ts: int, book: _Book, recv_ts: int, out: Decoded) -> None:
        symbol = self._book_topics.get(topic)
        if symbol is None:
            symbol = self.symbols.get(topic.rpartition(".")[2])
            if symbol is None:
                self.counters.unknown_topics += 1
                return
            self._book_topics[topic] = symbol
        # `u == 1` is a service restart: the message is a snapshot whatever its type says.
        snapshot = kind == "snapshot" or book.u == 1
        # Shared checked prices (`shared_decimal`), amounts checked finite and >= 0, in one comprehension.
        table = self._book_prices
        get = table.get
        bids = [
            (get(price) or shared_decimal(table, price), amount)
            for price, amount in book.b
            if amount.is_finite() and not amount.is_signed() or bad_amount(amount)
        ]
        asks = [
            (get(price) or shared_decimal(table, price), amount)
            for price, amount in book.a
            if amount.is_finite() and not amount.is_signed() or bad_amount(amount)
        ]
        out.books.append(
            BookUpdate(self.exchange, symbol, snapshot, book.u, book.u, None, bids, asks, ts * 1000, recv_ts)
        )
        self.counters.book_updates += 1

    def _trades(self, topic: _TradeTopic, trades: list[_Trade], recv_ts: int, out: Decoded) -> None:
        if not trades:
            return
        exchange = self.exchange
        symbol = topic.symbol
        sides = _SIDES
        known = self._trade_values
        # Every value converted before anything is kept: a bad one (not a finite decimal above zero)
        # rejects the whole frame (malformed).
        made = []
        for t in trades:
            price = known.get(t.p) or positive_decimal(known, t.p, "price", DECIMAL_INTERN_MAX)
            amount = known.get(t.v) or positive_decimal(known, t.v, "amount", DECIMAL_INTERN_MAX)
            made.append(Trade(exchange, symbol, t.i, price, amount, sides[t.S], t.T * 1000, recv_ts))
        recent = topic.recent
        current, previous = recent.current, recent.previous
        append = out.trades.append
        kept = 0
        for trade in made:
            i = trade.id
            if i in current or i in previous:
                self.counters.duplicates += 1
                continue
            current.add(i)
            append(trade)
            kept += 1
        self.counters.trades += kept
        last = made[-1].ts
        since = recent.since
        if since is None:
            since = recent.since = made[0].ts
        if len(current) >= RECENT_IDS or last - since >= RECENT_SPAN_US:
            recent.previous, recent.current, recent.since = current, set(), last
        if last > topic.last_ts:
            topic.last_ts = self.last_ts[topic.native] = last

    def _decimal(self, text: str) -> Decimal:
        """The exact Decimal of an exchange's decimal string, one shared object per distinct string.

        Values repeat, so records held in memory share them (trades the same way through their own checked
        table, `positive_decimal`): about 200 bytes less per trade, and a lookup is cheaper than a Decimal."""
        value = self._decimals.get(text)
        if value is None:
            try:
                value = Decimal(text)
            except ArithmeticError:
                raise msgspec.DecodeError(f"not a decimal: {text[:40]!r}") from None
            if not value.is_finite():
                raise msgspec.DecodeError(f"not a finite decimal: {text[:40]!r}")
            if len(self._decimals) >= DECIMAL_INTERN_MAX:
                self._decimals.clear()
            self._decimals[text] = value
        return value

    def _recent(self, native: str) -> _RecentIds:
        recent = self._seen.get(native)
        if recent is None:
            recent = self._seen[native] = _RecentIds()
        return recent

    def _trade_topic(self, native: str) -> _TradeTopic | None:
        """What the trade path keeps per native symbol, or None when the feed does not follow it."""
        symbol = self.symbols.get(native)
        if symbol is None:
            return None
        return _TradeTopic(native, symbol, self._recent(native), self.last_ts.get(native, 0))

    def admit_backfill(self, native: str, trades: list[Trade], since_ts: int) -> list[Trade]:
        """Backfilled trades we do not have: not seen recently and not older than `since_ts`."""
        recent = self._recent(native)
        current, previous = recent.current, recent.previous
        admitted = []
        for t in sorted(trades, key=lambda t: t.ts):
            if t.ts < since_ts or t.id in current or t.id in previous:
                continue
            current.add(t.id)
            admitted.append(t)
        return admitted
