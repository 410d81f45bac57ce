"""OKX v5 public frames decoded straight from bytes (PROTOCOLS.md §8.2-§8.4).

Pushes look like `{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[...]}`; book channels add
`"action":"snapshot"|"update"` (`books`) or send a whole snapshot every time (`books5`). Frames that begin
the way every live frame of their channel begins are decoded in one pass; others (other key orders,
recorded traffic) go through the envelope with `data` left raw.

Trades: `side` is the taker's. `tradeId` is numeric and increasing per instrument; a message aggregates
`count` maker fills and its `tradeId` is the last of them (tradeId 123, count 3 covers 121..123), so the
next message continues at `tradeId + 1` of the previous one's *last* id, and a jump past that is a gap the
backfiller fetches over REST. A trade at or below the last id seen is a repeat (the trade OKX pushes at
subscription, possibly older than the subscription; the overlap after a reconnect) and is dropped.

Books: levels are `[px, sz, "0", numOrders]`; the third field is deprecated and is **not** an order count.
The decoder keeps each level's `px` and `sz` strings as received (`RawLevel`) next to the exact `Decimal`s,
so the book can compute the CRC32 checksum over the exact strings (`OkxBookUpdate.raw_bids` / `raw_asks`).
`RawLevel` is a struct the garbage collector does not track: decoded as `list[str]`, every level was a
tracked list, ~10 per delta, and an update kept alive across the hand-off to the book keeper made the
collector promote and re-walk them (generations 1 and 2: a whole-heap pass every few thousand frames).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import DecodeCounters, Decoded, TradeGap
from marketflow.exchanges.okx.market_data import CHANNELS as MARKET_DATA_CHANNELS
from marketflow.exchanges.okx.market_data import TICKERS_START, decode_market_data, decode_tickers_frame
from marketflow.exchanges.orderbook import shared_decimal
from marketflow.exchanges.trade_values import positive_decimal
from marketflow.exchanges.venue_base import count_malformed
from marketflow.model import BookUpdate, Level, Trade

log = logging.getLogger("marketflow.exchanges.okx")

DECIMAL_INTERN_MAX = 20_000
"""Distinct price/size strings kept per decoder before the table starts over (see the Bybit decoder)."""
NO_SEQ = -2
"""`prev_id`/`last_id` stand-in of a book message without `seqId`/`prevSeqId` (older servers, captures)."""


class RawLevel(msgspec.Struct, array_like=True, gc=False):
    """One book level's price and size strings exactly as received; the rest of the array (the deprecated
    `"0"`, the order count) is not decoded. Not tracked by the collector (it holds two strings)."""

    px: str
    sz: str


class OkxBookUpdate(BookUpdate, frozen=True, gc=False):
    """A `books`/`books5` message: `first_id = last_id = seqId`, `prev_id = prevSeqId` (None when the message
    has none; both `NO_SEQ` without `seqId`), `checksum` as sent (0 or None: none to verify), and the levels
    as received, for the checksum over the exact strings."""

    raw_bids: list[RawLevel] = []
    raw_asks: list[RawLevel] = []
    whole: bool = False
    """`books5`: every message is the whole (5-level) book."""


class _Arg(msgspec.Struct, gc=False):
    channel: str
    instId: str = ""
    instType: str = ""


class _Trade(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: Literal["buy", "sell"]
    ts: int  # sent as a string; the decoders are not strict, so "1700000000000" becomes an int
    count: int = 1


class _TradeFrame(msgspec.Struct):
    arg: _Arg
    data: list[_Trade]


class _Book(msgspec.Struct, gc=False):
    asks: list[RawLevel]
    bids: list[RawLevel]
    ts: int
    checksum: int | None = None
    seqId: int | None = None
    prevSeqId: int | None = None


class _BookFrame(msgspec.Struct, gc=False):
    arg: _Arg
    data: list[_Book]
    action: str = "snapshot"


class _Envelope(msgspec.Struct):
    arg: _Arg
    data: msgspec.Raw
    action: str = "snapshot"


_trade_frame_decoder = msgspec.json.Decoder(_TradeFrame, strict=False)
_book_frame_decoder = msgspec.json.Decoder(_BookFrame, strict=False)
_envelope_decoder = msgspec.json.Decoder(_Envelope, strict=False)
_trades_decoder = msgspec.json.Decoder(list[_Trade], strict=False)
_books_decoder = msgspec.json.Decoder(list[_Book], strict=False)
_TRADE_START = b'{"arg":{"channel":"trades",'
_BOOK_START = b'{"arg":{"channel":"books'
BOOK_CHANNELS = frozenset({"books", "books5"})
_ZERO = Decimal(0)


class FrameDecoder:
    """OKX data frames → normalized trades and book updates of one feed (native → normalized symbols)."""

    def __init__(self, exchange: str, market: str, symbols: dict[str, str]) -> None:
        self.exchange = exchange
        self.market = market
        self.symbols = dict(symbols)
        self.counters = DecodeCounters()
        self.last_trade_id: dict[str, int] = {}
        """Per instId: the highest trade id seen (live or backfilled)."""
        self.last_ts: dict[str, int] = {}
        self._decimals: dict[str, Decimal] = {}
        # Trade prices and sizes have their own table: every entry checked by `positive_decimal` (finite,
        # > 0), so a hit needs no check; `_decimals` holds the rest (a funding rate may be negative).
        self._trade_values: dict[str, Decimal] = {}
        # Book levels (and the tickers' quotes) have their own table: every entry checked by
        # `shared_decimal` (finite, >= 0), unlike `_decimals` (funding rates may be negative).
        self._book_decimals: dict[str, Decimal] = {}

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None:
        counters = self.counters
        for frame in frames:
            counters.frames += 1
            try:
                if frame.startswith(_TRADE_START):
                    whole = _trade_frame_decoder.decode(frame)
                    self._trades(whole.arg.instId, whole.data, recv_ts, out)
                    continue
                if frame.startswith(_BOOK_START):
                    book = _book_frame_decoder.decode(frame)
                    self._books(book.arg, book.action, book.data, recv_ts, out)
                    continue
                if frame.startswith(TICKERS_START):
                    decode_tickers_frame(
                        self.exchange, frame, self.symbols, self._book_decimals, recv_ts, out, counters
                    )
                    continue
                env = _envelope_decoder.decode(frame)
                channel = env.arg.channel
                if channel == "trades":
                    self._trades(env.arg.instId, _trades_decoder.decode(env.data), recv_ts, out)
                elif channel in BOOK_CHANNELS:
                    self._books(env.arg, env.action, _books_decoder.decode(env.data), recv_ts, out)
                elif channel in MARKET_DATA_CHANNELS:
                    decode_market_data(
                        self.exchange, channel, env.data, self.symbols, self._decimal, recv_ts, out, counters
                    )
                else:
                    counters.ignored += 1
            except msgspec.DecodeError as exc:
                count_malformed(log, counters, "okx", self.market, exc, frame)

    def _trades(self, inst: str, trades: list[_Trade], recv_ts: int, out: Decoded) -> None:
        symbol = self.symbols.get(inst)
        if symbol is None:
            self.counters.unknown_topics += 1
            return
        if not trades:
            return
        exchange = self.exchange
        known = self._trade_values
        get = known.get
        # Every value converted before anything is kept: a bad one (a price or size not a finite decimal
        # above zero) rejects the whole frame (malformed).
        made = []
        for t in trades:
            if t.instId != inst:
                raise msgspec.DecodeError(f"trade of {t.instId!r} in a frame of {inst!r}")
            try:
                number = int(t.tradeId)
            except ValueError:
                raise msgspec.DecodeError(f"trade id not numeric: {t.tradeId[:40]!r}") from None
            price = get(t.px) or positive_decimal(known, t.px, "price", DECIMAL_INTERN_MAX)
            amount = get(t.sz) or positive_decimal(known, t.sz, "amount", DECIMAL_INTERN_MAX)
            trade = Trade(exchange, symbol, t.tradeId, price, amount, t.side, t.ts * 1000, recv_ts)
            made.append((number, t.count, trade))
        last = self.last_trade_id.get(inst)
        append = out.trades.append
        kept = 0
        for number, count, trade in made:
            if last is not None:
                if number <= last:
                    self.counters.duplicates += 1
                    continue
                first = number - max(count, 1) + 1
                if first > last + 1:
                    out.trade_gaps.append(
                        TradeGap(
                            exchange,
                            self.market,
                            symbol,
                            inst,
                            last + 1,
                            first,
                            self.last_ts.get(inst, trade.ts),
                            trade.ts,
                        )
                    )
            last = number
            append(trade)
            kept += 1
            self.last_ts[inst] = trade.ts
        if last is not None:
            self.last_trade_id[inst] = last
        self.counters.trades += kept

    def _books(self, arg: _Arg, action: str, books: list[_Book], recv_ts: int, out: Decoded) -> None:
        symbol = self.symbols.get(arg.instId)
        if symbol is None:
            self.counters.unknown_topics += 1
            return
        whole = arg.channel == "books5"
        levels = self._levels
        for book in books:
            seq = book.seqId
            prev = book.prevSeqId
            out.books.append(
                OkxBookUpdate(
                    self.exchange,
                    symbol,
                    whole or action == "snapshot",
                    NO_SEQ if seq is None else seq,
                    NO_SEQ if seq is None else seq,
                    None if seq is None or prev is None else prev,
                    levels(book.bids),
                    levels(book.asks),
                    book.ts * 1000,
                    recv_ts,
                    book.checksum,
                    book.bids,
                    book.asks,
                    whole,
                )
            )
            self.counters.book_updates += 1

    def _levels(self, raw: list[RawLevel]) -> list[Level]:
        """Exact levels; prices and sizes are one shared Decimal per distinct string (`shared_decimal`:
        a book lookup then reuses the price's hash; one comprehension, no call per level unless new)."""
        table = self._book_decimals
        get = table.get
        # A size "0" (a delete, a fifth of the levels) finds a falsy Decimal: named, not called for.
        # A level shorter than [px, sz] was refused by msgspec already (the frame is malformed).
        return [
            (
                get(x.px) or shared_decimal(table, x.px),
                get(x.sz) or (_ZERO if x.sz == "0" else shared_decimal(table, x.sz)),
            )
            for x in raw
        ]

    def _decimal(self, text: str) -> Decimal:
        """The exact Decimal of a decimal string, one shared object per distinct string."""
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

    def admit_backfill(self, native: str, trades: list[Trade], since_ts: int) -> list[Trade]:
        """Of fetched trades, those past the last id seen and not older than `since_ts`, oldest first (the
        last id moves past them). OKX gaps are filled by id (`Venue.fill_gap`), which needs no filter."""
        last = self.last_trade_id.get(native, -1)
        admitted = []
        for trade in sorted(trades, key=lambda t: int(t.id)):
            number = int(trade.id)
            if number > last and trade.ts >= since_ts:
                last = number
                admitted.append(trade)
        if admitted:
            self.last_trade_id[native] = last
        return admitted
