"""Kraken WebSocket v2 public streams: `trade`, `book`, `instrument`, heartbeats (PROTOCOLS.md §10).

Topics are `trade:BTC/USD` and `book:10:BTC/USD` (the depth is part of the subscription). The `Session`
sends one request per topic (Kraken acks once per symbol, so one symbol per request keeps the feed's
one-ack-per-request rule exact), and on a connection with books first subscribes `instrument`, whose
snapshot carries every pair's `price_precision`/`qty_precision` the book checksum needs. Keep-alive: the
application-level `{"method":"ping"}` (answered by `pong`); the venue sends `{"channel":"heartbeat"}` when
nothing else flows, which counts as traffic for the feed's stale-data watchdog and is ignored here.

Prices and quantities are JSON numbers at full precision, made `Decimal` from the literal's text (a
`float_hook` for prices, which repeat: one shared, checked object each; msgspec for quantities), which
keeps its digits (`45285.20` stays `45285.20`), never through a float.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

import msgspec

from marketflow.exchanges.base import (
    Ack,
    ControlEvent,
    DataFrame,
    DecodeCounters,
    Decoded,
    Pong,
    SubscribeRequest,
    TradeGap,
    UnknownControl,
)
from marketflow.exchanges.kraken.book import KrakenBookUpdate
from marketflow.exchanges.orderbook import bad_amount, shared_decimal
from marketflow.exchanges.trade_values import TRADE_VALUES_MAX, bad_trade_value, positive, positive_decimal
from marketflow.exchanges.venue_base import count_malformed
from marketflow.model import Ticker, Trade

DEFAULT_WS = "wss://ws.kraken.com/v2"
TRADE = "trade"
BOOK = "book"
TICKER = "ticker"
INSTRUMENT = "instrument"
HEARTBEAT = b'{"method":"ping"}'
SEND_INTERVAL_S = 0.02
"""Kraken's inbound message rate is dynamic and undocumented; 50 requests/s stays well inside it."""

log = logging.getLogger("marketflow.exchanges.kraken")


def trade_topic(native: str) -> str:
    return f"{TRADE}:{native}"


def ticker_topic(native: str) -> str:
    return f"{TICKER}:{native}"


def book_topic(native: str, depth: int) -> str:
    return f"{BOOK}:{depth}:{native}"


def split_topic(topic: str) -> tuple[str, int, str]:
    """(channel, depth or 0, native) of a topic; ValueError if it is not one."""
    channel, _, rest = topic.partition(":")
    if channel in (TRADE, TICKER) and rest:
        return channel, 0, rest
    if channel == BOOK:
        depth, _, native = rest.partition(":")
        if depth.isdigit() and native:
            return BOOK, int(depth), native
    raise ValueError(f"not a kraken topic: {topic!r}")


# -- control ---------------------------------------------------------------------------------------------


class _Control(msgspec.Struct):
    """Acks and pongs (`method`), or a data frame (`channel`) with its keys in an unusual order."""

    method: str | None = None
    channel: str | None = None
    success: bool | None = None
    error: str | None = None
    req_id: int | str | None = None
    symbol: str | None = None


_control_decoder = msgspec.json.Decoder(_Control)
_encode = msgspec.json.encode


class Session:
    """Protocol rules for one Kraken v2 connection."""

    sequence_check = None  # no per-connection message numbering (books carry their own checksum)

    def __init__(self, market: str, topics: Sequence[str]) -> None:
        self.market = market
        self.topics = list(topics)
        self._next_req = 0

    @property
    def send_interval_s(self) -> float:
        return SEND_INTERVAL_S

    @property
    def max_lifetime_s(self) -> float | None:
        return None

    def _request(self, method: str, topic: str, snapshot: bool = True) -> SubscribeRequest:
        self._next_req += 1
        req_id = self._next_req
        if topic == INSTRUMENT:
            params: dict[str, object] = {"channel": INSTRUMENT}
        else:
            channel, depth, native = split_topic(topic)
            params = {"channel": channel, "symbol": [native]}
            if channel == BOOK:
                params["depth"] = depth  # an unsubscribe without it means depth 10
        if method == "subscribe":
            params["snapshot"] = snapshot
        payload = _encode({"method": method, "params": params, "req_id": req_id})
        # `instrument` is no topic of the feed's: its request settles with its ack but names no topic.
        return SubscribeRequest(str(req_id), () if topic == INSTRUMENT else (topic,), payload)

    def subscribe_requests(self) -> list[SubscribeRequest]:
        # The trade snapshot (the last 50 trades) fills a short reconnect's gap by itself; the decoder
        # drops the ones it has by trade id.
        first = (
            [self._request("subscribe", INSTRUMENT)] if any(t.startswith(BOOK) for t in self.topics) else []
        )
        return first + [self._request("subscribe", t) for t in self.topics]

    def subscribe_topic_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return [self._request("subscribe", t) for t in topics]

    def unsubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return [self._request("unsubscribe", t) for t in topics]

    def resubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        """Unsubscribe (naming the depth) and subscribe again: the book comes back with a snapshot."""
        return self.unsubscribe_requests(topics) + [self._request("subscribe", t) for t in topics]

    def heartbeat(self) -> bytes:
        return HEARTBEAT

    def is_data(self, message: bytes) -> bool:
        # Data frames (channels, heartbeats, status) lead with `channel`; acks and pongs with `method`.
        return message.startswith(b'{"channel":')

    def control(self, message: bytes) -> ControlEvent:
        try:
            msg = _control_decoder.decode(message)
        except msgspec.DecodeError as exc:
            return UnknownControl(f"undecodable frame: {exc}")
        if msg.channel is not None:
            return DataFrame()
        if msg.method == "pong":
            return Pong()
        if msg.method in ("subscribe", "unsubscribe") and msg.success is not None:
            req_id = None if msg.req_id is None else str(msg.req_id)
            return Ack(req_id, msg.success, msg.error or "")
        return UnknownControl(f"unexpected control frame method={msg.method!r} error={msg.error!r}")


# -- data ------------------------------------------------------------------------------------------------


class _Trade(msgspec.Struct):
    symbol: str
    side: Literal["buy", "sell"]
    price: Any
    """The shared Decimal `_trade_number` made of the JSON number's text when it is above zero; anything
    else as decoded (a number's text, an int, a JSON string), for `_checked` to convert or refuse."""
    qty: Decimal
    """Made by msgspec (quantities seldom repeat: a table would only churn), checked in `_trades`."""
    trade_id: int
    timestamp: str


class _Level(msgspec.Struct, array_like=False):
    price: Any
    """The shared Decimal `_book_price` made of the JSON number's text (the frame decoder's float_hook);
    a JSON integer or a string stays as sent and goes through `_other_price`."""
    qty: Decimal


class _Book(msgspec.Struct):
    symbol: str
    checksum: int
    bids: list[_Level] = []
    asks: list[_Level] = []
    timestamp: str | None = None


class _Pair(msgspec.Struct):
    symbol: str
    price_precision: int
    qty_precision: int


class _Instruments(msgspec.Struct):
    pairs: list[_Pair] = []


class _Ticker(msgspec.Struct):
    symbol: str
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal
    last: Decimal
    volume: Decimal
    timestamp: str | None = None


class _TickerFrame(msgspec.Struct, tag_field="channel", tag=TICKER):
    data: list[_Ticker]
    type: str = "update"


class _TradeFrame(msgspec.Struct, tag_field="channel", tag=TRADE):
    data: list[_Trade]
    type: str = "update"


class _BookFrame(msgspec.Struct, tag_field="channel", tag=BOOK):
    data: list[_Book]
    type: str = "update"


class _InstrumentFrame(msgspec.Struct, tag_field="channel", tag=INSTRUMENT):
    data: _Instruments
    type: str = "update"


class _Heartbeat(msgspec.Struct, tag_field="channel", tag="heartbeat"):
    pass


class _Status(msgspec.Struct, tag_field="channel", tag="status"):
    data: msgspec.Raw = msgspec.Raw(b"null")
    type: str = "update"


class _Envelope(msgspec.Struct):
    channel: str


_book_prices: dict[str, Decimal] = {}


def _book_price(text: str) -> Decimal:
    """A book price's number text → its one shared, checked Decimal (`shared_decimal`): the book hashes
    each price, and a fresh Decimal's hash (~0.3 µs) was a large part of a Kraken delta's apply."""
    return _book_prices.get(text) or shared_decimal(_book_prices, text)


def _other_price(value: object) -> Decimal:
    """A book price sent as a JSON integer or a string (a number with a fraction went through the hook)."""
    if type(value) is int and value >= 0:
        return _book_price(str(value))
    if type(value) is str:
        return _book_price(value)
    raise msgspec.DecodeError(f"book price not a finite non-negative decimal: {str(value)[:40]!r}")


_trade_values: dict[str, Decimal] = {}


def _trade_number(text: str) -> Decimal | str:
    """A trade frame's number text → its one shared Decimal when above zero (the table holds only those);
    any other number stays text, which `_checked` refuses naming the field."""
    value = _trade_values.get(text)
    if value is None:
        value = Decimal(text)  # the text of a JSON number: always a finite decimal
        if value <= 0:
            return text
        if len(_trade_values) >= TRADE_VALUES_MAX:
            _trade_values.clear()
        _trade_values[text] = value
    return value


def _checked(t: _Trade) -> bool:
    """A trade whose price or quantity is not a shared Decimal from `_trade_number`: converted in place
    when it is a JSON integer or a string above zero, else `msgspec.DecodeError` naming the field."""
    t.price = _positive(t.price, "price")
    positive(t.qty, "amount")
    return True


def _positive(value: object, field: str) -> Decimal:
    if type(value) is Decimal:
        return value
    if type(value) is int and value > 0:
        return Decimal(value)
    if type(value) is str:  # a JSON string, or the text of a number not above zero: refused there
        return positive_decimal(_trade_values, value, field)
    bad_trade_value(field, value)


_trade_frame_decoder = msgspec.json.Decoder(_TradeFrame, float_hook=_trade_number)
_frame_decoder = msgspec.json.Decoder(
    _BookFrame | _TickerFrame | _InstrumentFrame | _Heartbeat | _Status, float_hook=_book_price
)
_TRADE_START = b'{"channel":"trade",'
"""How every trade frame seen live begins; one with its keys in another order is found by its envelope."""
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_KNOWN = frozenset({TRADE, BOOK, TICKER, INSTRUMENT, "heartbeat", "status"})
_seconds_cache: dict[str, int] = {}
_UNKNOWN_PRECISIONS = (-1, -1)
_ZERO = Decimal(0)


def timestamp_us(text: str) -> int:
    """RFC3339 `2023-09-25T07:49:37.708706Z` → µs since the epoch; DecodeError if not that shape."""
    seconds = _seconds_cache.get(text[:19])
    if seconds is not None and len(text) == 27 and text[19] == "." and text[26] == "Z":
        micros = text[20:26]
        if micros.isdigit():  # the shape Kraken sends: one slice, one int
            return seconds * 1_000_000 + int(micros)
    return _timestamp_us(text)


def _timestamp_us(text: str) -> int:
    if len(text) < 20 or text[-1] != "Z" or text[10] != "T":
        raise msgspec.DecodeError(f"not an RFC3339 UTC time: {text[:40]!r}")
    head = text[:19]
    seconds = _seconds_cache.get(head)
    if seconds is None:
        try:
            seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            raise msgspec.DecodeError(f"not an RFC3339 UTC time: {text[:40]!r}") from None
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        _seconds_cache[head] = seconds
    fraction = text[20:-1] if text[19] == "." else ""
    if fraction and not (fraction.isdigit() and fraction.isascii()):
        raise msgspec.DecodeError(f"not an RFC3339 UTC time: {text[:40]!r}")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return seconds * 1_000_000 + micros


class FrameDecoder:
    """Kraken v2 data frames → trades, book updates and trade-id gaps of one connection."""

    def __init__(self, exchange: str, market: str, symbols: dict[str, str]) -> None:
        self.exchange = exchange
        self.market = market
        self.symbols = dict(symbols)
        self.counters = DecodeCounters()
        self.last_trade: dict[str, tuple[int, int]] = {}
        """native → (trade id, ts) of the newest trade passed on."""
        self.precisions: dict[str, tuple[int, int]] = {}
        """native → (price_precision, qty_precision) from the `instrument` channel."""
        self._book_messages: dict[str, int] = {}

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None:
        counters = self.counters
        for frame in frames:
            counters.frames += 1
            try:
                if frame.startswith(_TRADE_START):
                    self._trades(_trade_frame_decoder.decode(frame).data, recv_ts, out)
                    continue
                try:
                    msg = _frame_decoder.decode(frame)
                except msgspec.ValidationError:
                    channel = _envelope_decoder.decode(frame).channel
                    if channel == TRADE:
                        self._trades(_trade_frame_decoder.decode(frame).data, recv_ts, out)
                        continue
                    if channel not in _KNOWN:
                        counters.ignored += 1
                        continue
                    raise
                if isinstance(msg, _BookFrame):
                    self._books(msg, recv_ts, out)
                elif isinstance(msg, _TickerFrame):
                    self._tickers(msg, recv_ts, out)
                elif isinstance(msg, _InstrumentFrame):
                    self._instruments(msg.data)
                else:
                    counters.ignored += 1
            except msgspec.DecodeError as exc:
                count_malformed(log, counters, "kraken", self.market, exc, frame)

    def _instruments(self, data: _Instruments) -> None:
        symbols = self.symbols
        for pair in data.pairs:
            if pair.symbol in symbols:
                self.precisions[pair.symbol] = (pair.price_precision, pair.qty_precision)

    def _tickers(self, msg: _TickerFrame, recv_ts: int, out: Decoded) -> None:
        """Every Kraken ticker message carries every field: each is a whole state (`snapshot`). Without a
        `timestamp` the receive time stands in (all of a symbol's tickers then use that clock)."""
        made = []
        for t in msg.data:
            symbol = self.symbols.get(t.symbol)
            if symbol is None:
                self.counters.unknown_topics += 1
                continue
            ts = recv_ts if t.timestamp is None else timestamp_us(t.timestamp)
            made.append(
                Ticker(
                    self.exchange, symbol, ts, recv_ts, t.bid, t.bid_qty, t.ask, t.ask_qty, t.last, t.volume,
                    snapshot=True,
                )
            )  # fmt: skip
        out.tickers.extend(made)
        self.counters.tickers += len(made)

    def _books(self, msg: _BookFrame, recv_ts: int, out: Decoded) -> None:
        snapshot = msg.type == "snapshot"
        made = []
        for book in msg.data:
            symbol = self.symbols.get(book.symbol)
            if symbol is None:
                self.counters.unknown_topics += 1
                continue
            ts = recv_ts if book.timestamp is None else timestamp_us(book.timestamp)
            count = self._book_messages.get(book.symbol, 0) + 1
            self._book_messages[book.symbol] = count
            pp, qp = self.precisions.get(book.symbol, _UNKNOWN_PRECISIONS)
            # Prices shared and checked by `_book_price`; quantities checked finite and >= 0 here.
            bids = [
                (price if type(price := level.price) is Decimal else _other_price(price), qty)
                for level in book.bids
                if (qty := level.qty).is_finite() and not qty.is_signed() or bad_amount(qty)
            ]
            asks = [
                (price if type(price := level.price) is Decimal else _other_price(price), qty)
                for level in book.asks
                if (qty := level.qty).is_finite() and not qty.is_signed() or bad_amount(qty)
            ]
            made.append(
                KrakenBookUpdate(
                    self.exchange,
                    symbol,
                    snapshot,
                    count,
                    count,
                    count - 1,
                    bids,
                    asks,
                    ts,
                    recv_ts,
                    book.checksum,
                    pp,
                    qp,
                )
            )
        out.books.extend(made)
        self.counters.book_updates += len(made)

    def _trades(self, trades: list[_Trade], recv_ts: int, out: Decoded) -> None:
        if any(a.trade_id > b.trade_id for a, b in zip(trades, trades[1:], strict=False)):
            trades = sorted(trades, key=lambda t: t.trade_id)
        # Every value converted and checked before anything is kept: a bad one (a price or quantity not a
        # finite decimal above zero) rejects the whole frame (malformed). A price that is a Decimal came
        # from `_trade_number`'s checked table: one type test; a quantity: `is_finite` and one comparison.
        made = [
            (t, timestamp_us(t.timestamp))
            for t in trades
            if type(t.price) is Decimal and (qty := t.qty).is_finite() and qty > _ZERO or _checked(t)
        ]
        counters = self.counters
        for t, ts in made:
            native = t.symbol
            symbol = self.symbols.get(native)
            if symbol is None:
                counters.unknown_topics += 1
                continue
            last = self.last_trade.get(native)
            if last is not None:
                last_id, last_ts = last
                if t.trade_id <= last_id:
                    counters.duplicates += 1
                    continue
                if t.trade_id > last_id + 1:
                    out.trade_gaps.append(
                        TradeGap(
                            self.exchange, self.market, symbol, native, last_id + 1, t.trade_id, last_ts, ts
                        )
                    )
            self.last_trade[native] = (t.trade_id, ts)
            out.trades.append(
                Trade(self.exchange, symbol, str(t.trade_id), t.price, t.qty, t.side, ts, recv_ts)
            )
            counters.trades += 1

    def admit_backfill(self, native: str, trades: list[Trade], since_ts: int) -> list[Trade]:
        """Kraken gaps are filled by trade id (`Venue.fill_gap`), never caught up: the time bound only."""
        return sorted((t for t in trades if t.ts >= since_ts), key=lambda t: t.ts)
