"""Binance spot and USD-M public streams: aggTrade and diff depth (PROTOCOLS.md §2, §3).

Connections, topics, the per-connection `Session` and the `FrameDecoder` (the hot path).

Combined streams (`/stream`) with SUBSCRIBE messages carrying integer ids, each result checked. USD-M is
split by routed paths: depth on `/public`, trades on `/market` (an unrouted connection only receives
`/public` streams). A connection holds at most 1024 streams; more are sharded. Aggregate trade ids are
contiguous per symbol, so the decoder drops duplicates (the overlap of a connection and its replacement)
and reports jumps as `TradeGap`s for backfill.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import (
    Ack,
    ConnectionPlan,
    ControlEvent,
    DataFrame,
    DecodeCounters,
    Decoded,
    Reconnect,
    SubscribeRequest,
    TradeGap,
    UnknownControl,
)
from marketflow.exchanges.orderbook import bad_amount, shared_decimal
from marketflow.exchanges.trade_values import bad_trade
from marketflow.exchanges.venue_base import count_malformed
from marketflow.model import BookUpdate, DerivativesTick, Liquidation, Ticker, Trade, liquidation_id

EXCHANGE = "binance"
MARKET_NAMES = ("spot", "usdm")
DEFAULT_WS = {"spot": "wss://stream.binance.com:9443", "usdm": "wss://fstream.binance.com"}
DEFAULT_REST = {"spot": "https://api.binance.com", "usdm": "https://fapi.binance.com"}
MAX_STREAMS_PER_CONNECTION = 1024
# Streams per SUBSCRIBE message: small enough that one refused stream names its neighbours clearly.
STREAMS_PER_REQUEST = 100
# Inbound message limits per connection (spot 5/s, USD-M 10/s, pongs included): stay well under.
SEND_INTERVAL_S = {"spot": 0.25, "usdm": 0.125}
# Connections are cut at 24 h; replace them ten minutes before.
MAX_LIFETIME_S = 24 * 3600 - 600
TRADE_STREAM = "aggTrade"
DEPTH_STREAM = "depth@100ms"
BOOK_TICKER_STREAM = "bookTicker"
TICKER_STREAM = "ticker"
MARK_PRICE_STREAM = "markPrice@1s"
FORCE_ORDER_STREAM = "forceOrder"
STREAM_CHANNELS: dict[str, str] = {
    TRADE_STREAM: "trades",
    DEPTH_STREAM: "book",
    BOOK_TICKER_STREAM: "ticker",
    TICKER_STREAM: "ticker",
    MARK_PRICE_STREAM: "derivatives",
    FORCE_ORDER_STREAM: "liquidations",
}
"""What channel each stream kind serves (`ticker` takes two: best bid/ask and the 24 h ticker)."""

log = logging.getLogger("marketflow.exchanges.binance")


def _check(market: str) -> None:
    if market not in MARKET_NAMES:
        raise ValueError(f"binance has no market {market!r}; expected one of {sorted(MARKET_NAMES)}")


def ws_url(market: str, override: str | None = None) -> str:
    """The base URL the feed appends its paths to (`/stream`, or `/public/stream` on USD-M)."""
    _check(market)
    return (override or DEFAULT_WS[market]).rstrip("/")


def rest_url(market: str, override: str | None = None) -> str:
    _check(market)
    return (override or DEFAULT_REST[market]).rstrip("/")


def trade_topic(native: str) -> str:
    return f"{native.lower()}@{TRADE_STREAM}"


def depth_topic(native: str) -> str:
    return f"{native.lower()}@{DEPTH_STREAM}"


def stream_topic(native: str, stream: str) -> str:
    return f"{native.lower()}@{stream}"


# USD-M routing (§3): high-frequency streams on `/public`, the rest on `/market`.
_PUBLIC_STREAMS = frozenset({DEPTH_STREAM, BOOK_TICKER_STREAM})


def channel_streams(market: str, channel: str) -> tuple[str, ...]:
    """The stream kinds a channel subscribes (mark price and forced orders exist on USD-M only)."""
    if channel == "ticker":
        return (BOOK_TICKER_STREAM, TICKER_STREAM)
    if channel == "derivatives":
        return (MARK_PRICE_STREAM,) if market == "usdm" else ()
    if channel == "liquidations":
        return (FORCE_ORDER_STREAM,) if market == "usdm" else ()
    return (TRADE_STREAM,) if channel == "trades" else (DEPTH_STREAM,)


def connections(
    market: str,
    natives: Sequence[str],
    channels: Sequence[str],
    book_depth: int,
    ws_override: str | None = None,
) -> list[ConnectionPlan]:
    """USD-M: depth and book tickers on `/public`, the rest on `/market`; spot: one path. Shards past
    1024 streams."""
    base = ws_url(market, ws_override)
    by_stream = {n.lower(): n for n in natives}
    groups: list[tuple[str, str, list[str], frozenset[str]]] = []
    public: list[str] = []
    routed: list[str] = []
    public_channels: set[str] = set()
    routed_channels: set[str] = set()
    for channel in ("trades", "book", "ticker", "derivatives", "liquidations"):
        if channel not in channels:
            continue
        for stream in channel_streams(market, channel):
            if market == "usdm" and stream in _PUBLIC_STREAMS:
                public += [stream_topic(n, stream) for n in natives]
                public_channels.add(channel)
            else:
                routed += [stream_topic(n, stream) for n in natives]
                routed_channels.add(channel)
    if market == "usdm":
        if routed:
            groups.append(("/market", base + "/market/stream", routed, frozenset(routed_channels)))
        if public:
            groups.append(("/public", base + "/public/stream", public, frozenset(public_channels)))
    elif routed:
        groups.append(("", base + "/stream", routed, frozenset(channels)))
    plans: list[ConnectionPlan] = []
    for suffix, url, topics, chans in groups:
        for shard, start in enumerate(range(0, len(topics), MAX_STREAMS_PER_CONNECTION)):
            name = suffix + (f"#{shard + 1}" if shard else "")
            chunk = tuple(topics[start : start + MAX_STREAMS_PER_CONNECTION])
            shard_natives = tuple(dict.fromkeys(by_stream[t.partition("@")[0]] for t in chunk))
            plans.append(ConnectionPlan(name, url, chunk, chans, shard_natives))
    return plans


class _Result(msgspec.Struct):
    id: int | str | None = None
    result: msgspec.Raw | None = None
    error: _Error | None = None
    stream: str | None = None
    e: str | None = None


class _Error(msgspec.Struct):
    code: int = 0
    msg: str = ""


class _Combined(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class AggTrade(msgspec.Struct):
    a: int
    p: Decimal  # made by msgspec, which takes "NaN" or "-1": checked in `FrameDecoder._trade`
    q: Decimal
    T: int
    m: bool


class _Depth(msgspec.Struct):
    E: int
    U: int
    u: int
    b: list[tuple[str, Decimal]]  # prices made shared, checked Decimals by `shared_decimal`
    a: list[tuple[str, Decimal]]
    pu: int | None = None
    T: int | None = None


class _BookTicker(msgspec.Struct):
    """`bookTicker`: spot frames carry no time (`T`/`E` on USD-M only)."""

    b: str
    B: str
    a: str
    A: str
    T: int | None = None
    E: int | None = None


class _Ticker24h(msgspec.Struct):
    """`ticker` (24 h rolling): last price `c`, base volume `v`."""

    E: int
    c: str
    v: str


class _MarkPrice(msgspec.Struct):
    E: int
    p: str
    i: str
    r: str
    T: int


class _ForceOrderBody(msgspec.Struct):
    S: str
    q: str
    p: str
    T: int


class _ForceOrder(msgspec.Struct):
    E: int
    o: _ForceOrderBody


_result_decoder = msgspec.json.Decoder(_Result)
_combined_decoder = msgspec.json.Decoder(_Combined)
_agg_decoder = msgspec.json.Decoder(AggTrade)
_depth_decoder = msgspec.json.Decoder(_Depth)
_book_ticker_decoder = msgspec.json.Decoder(_BookTicker)
_ticker_decoder = msgspec.json.Decoder(_Ticker24h)
_mark_decoder = msgspec.json.Decoder(_MarkPrice)
_force_decoder = msgspec.json.Decoder(_ForceOrder)
_FORCE_SIDES: dict[str, Literal["buy", "sell"]] = {"BUY": "buy", "SELL": "sell"}
_ZERO = Decimal(0)


class _DepthFrame(msgspec.Struct):
    """A combined-stream depth frame in one pass, for the hot path."""

    stream: str
    data: _Depth


_depth_frame_decoder = msgspec.json.Decoder(_DepthFrame)


class _BookTickerFrame(msgspec.Struct):
    """A combined-stream `bookTicker` frame in one pass, for the hot path."""

    stream: str
    data: _BookTicker


_book_ticker_frame_decoder = msgspec.json.Decoder(_BookTickerFrame)


class Session:
    """Protocol rules for one Binance combined-stream connection."""

    sequence_check = None  # no per-connection message numbering

    def __init__(self, market: str, topics: Sequence[str]) -> None:
        _check(market)
        self.market = market
        self.topics = list(topics)
        self._next_id = 0

    @property
    def send_interval_s(self) -> float:
        return SEND_INTERVAL_S[self.market]

    @property
    def max_lifetime_s(self) -> float:
        return MAX_LIFETIME_S

    def _requests(self, method: str, topics: Sequence[str]) -> list[SubscribeRequest]:
        requests = []
        for start in range(0, len(topics), STREAMS_PER_REQUEST):
            chunk = tuple(topics[start : start + STREAMS_PER_REQUEST])
            self._next_id += 1
            payload = msgspec.json.encode({"method": method, "params": list(chunk), "id": self._next_id})
            requests.append(SubscribeRequest(str(self._next_id), chunk, payload))
        return requests

    def subscribe_requests(self) -> list[SubscribeRequest]:
        return self._requests("SUBSCRIBE", self.topics)

    def subscribe_topic_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("SUBSCRIBE", topics)

    def unsubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("UNSUBSCRIBE", topics)

    def resubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        # A diff-depth stream needs no resubscribe to resync: the book is re-seeded from a REST snapshot.
        return []

    def heartbeat(self) -> bytes | None:
        # Binance pings us (protocol ping frames); the transport answers each with a pong.
        return None

    def is_data(self, message: bytes) -> bool:
        return message.startswith(b'{"stream":"') and not message.startswith(b'{"stream":"!')

    def control(self, message: bytes) -> ControlEvent:
        try:
            msg = _result_decoder.decode(message)
        except msgspec.DecodeError as exc:
            return UnknownControl(f"undecodable frame: {exc}")
        if msg.e == "serverShutdown" or msg.stream == "!serverShutdown":
            return Reconnect("serverShutdown")
        if msg.stream is not None:
            return DataFrame()  # a data frame with its stream out of the usual place
        if msg.error is not None:
            reason = f"code {msg.error.code}: {msg.error.msg}"
            return Ack(None if msg.id is None else str(msg.id), False, reason)
        if msg.id is not None:
            return Ack(str(msg.id), True, "")
        return UnknownControl("unexpected control frame")


def _decimal(text: str) -> Decimal:
    """The exact Decimal of a venue's decimal string (a bad one rejects the frame as malformed)."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise msgspec.DecodeError(f"not a decimal: {text[:40]!r}") from None
    if not value.is_finite():
        raise msgspec.DecodeError(f"not a finite decimal: {text[:40]!r}")
    return value


class FrameDecoder:
    """Combined-stream frames → trades (deduplicated, gaps reported) and book updates for one feed."""

    def __init__(self, exchange: str, market: str, symbols: dict[str, str]) -> None:
        _check(market)
        self.exchange = exchange
        self.market = market
        # Stream names carry the symbol in lower case.
        self.symbols = {native.lower(): normalized for native, normalized in symbols.items()}
        self.natives = {native.lower(): native for native in symbols}
        self.last_trade: dict[str, tuple[int, int]] = {}
        self.counters = DecodeCounters()
        self._prices: dict[str, Decimal] = {}

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None:
        counters = self.counters
        for frame in frames:
            counters.frames += 1
            try:
                if frame.find(b"@depth", 11, 64) > 0:  # a depth event: envelope and event in one pass
                    whole = _depth_frame_decoder.decode(frame)
                    symbol = self.symbols.get(whole.stream.partition("@")[0])
                    if symbol is None:
                        counters.unknown_topics += 1
                    else:
                        self._depth(symbol, whole.data, recv_ts, out)
                    continue
                if frame.find(b"@bookTicker", 11, 64) > 0:  # envelope and event in one pass
                    quote = _book_ticker_frame_decoder.decode(frame)
                    sym, _, kind = quote.stream.partition("@")
                    symbol = self.symbols.get(sym)
                    if symbol is None:
                        counters.unknown_topics += 1
                    elif kind == BOOK_TICKER_STREAM:
                        self._book_ticker(symbol, quote.data, recv_ts, out)
                    else:
                        counters.ignored += 1
                    continue
                env = _combined_decoder.decode(frame)
                sym, _, kind = env.stream.partition("@")
                symbol = self.symbols.get(sym)
                if symbol is None:
                    counters.unknown_topics += 1
                    continue
                if kind == TRADE_STREAM:
                    self._trade(sym, symbol, _agg_decoder.decode(env.data), recv_ts, out)
                elif kind.startswith("depth"):
                    self._depth(symbol, _depth_decoder.decode(env.data), recv_ts, out)
                elif kind == BOOK_TICKER_STREAM:
                    self._book_ticker(symbol, _book_ticker_decoder.decode(env.data), recv_ts, out)
                elif kind == TICKER_STREAM:
                    t = _ticker_decoder.decode(env.data)
                    out.tickers.append(
                        Ticker(
                            self.exchange,
                            symbol,
                            t.E * 1000,
                            recv_ts,
                            last=_decimal(t.c),
                            volume_24h=_decimal(t.v),
                        )
                    )
                    counters.tickers += 1
                elif kind == MARK_PRICE_STREAM:
                    m = _mark_decoder.decode(env.data)
                    out.derivatives.append(
                        DerivativesTick(
                            self.exchange,
                            symbol,
                            m.E * 1000,
                            recv_ts,
                            mark_price=_decimal(m.p),
                            index_price=_decimal(m.i),
                            funding_rate=_decimal(m.r),
                            next_funding_time=m.T * 1000,
                        )
                    )
                    counters.derivatives += 1
                elif kind == FORCE_ORDER_STREAM:
                    o = _force_decoder.decode(env.data).o
                    side = _FORCE_SIDES.get(o.S)
                    if side is None:
                        raise msgspec.DecodeError(f"unknown forced order side {o.S[:20]!r}")
                    out.liquidations.append(
                        Liquidation(
                            self.exchange,
                            symbol,
                            liquidation_id(o.T, o.S, o.p, o.q),
                            side,
                            _decimal(o.p),
                            _decimal(o.q),
                            o.T * 1000,
                            recv_ts,
                        )
                    )
                    counters.liquidations += 1
                else:
                    counters.ignored += 1
            except msgspec.DecodeError as exc:
                count_malformed(log, counters, "binance", self.market, exc, frame)

    def _depth(self, symbol: str, d: _Depth, recv_ts: int, out: Decoded) -> None:
        ts = (d.T if d.T is not None else d.E) * 1000
        # Shared checked prices (`shared_decimal`), amounts checked finite and >= 0, in one comprehension.
        table = self._prices
        get = table.get
        bids = [
            (get(price) or shared_decimal(table, price), amount)
            for price, amount in d.b
            if amount.is_finite() and not amount.is_signed() or bad_amount(amount)
        ]
        asks = [
            (get(price) or shared_decimal(table, price), amount)
            for price, amount in d.a
            if amount.is_finite() and not amount.is_signed() or bad_amount(amount)
        ]
        out.books.append(BookUpdate(self.exchange, symbol, False, d.U, d.u, d.pu, bids, asks, ts, recv_ts))
        self.counters.book_updates += 1

    def _book_ticker(self, symbol: str, bt: _BookTicker, recv_ts: int, out: Decoded) -> None:
        """Best bid and ask: prices are the shared objects the book uses (they repeat), sizes fresh."""
        when = bt.T if bt.T is not None else bt.E
        ts = recv_ts if when is None else when * 1000
        prices = self._prices
        get = prices.get
        bid = get(bt.b) or shared_decimal(prices, bt.b)
        ask = get(bt.a) or shared_decimal(prices, bt.a)
        out.tickers.append(
            Ticker(self.exchange, symbol, ts, recv_ts, bid, _decimal(bt.B), ask, _decimal(bt.A))
        )
        self.counters.tickers += 1

    def _trade(self, sym: str, symbol: str, t: AggTrade, recv_ts: int, out: Decoded) -> None:
        # Checked first: a refused trade (the frame malformed) reports no gap and does not move the id on.
        price, amount = t.p, t.q
        if not (price.is_finite() and price > _ZERO and amount.is_finite() and amount > _ZERO):
            bad_trade(price, amount)
        ts = t.T * 1000
        last = self.last_trade.get(sym)
        if last is not None:
            last_id, last_ts = last
            if t.a <= last_id:
                self.counters.duplicates += 1
                return
            if t.a > last_id + 1:
                out.trade_gaps.append(
                    TradeGap(
                        self.exchange, self.market, symbol, self.natives[sym], last_id + 1, t.a, last_ts, ts
                    )
                )
        self.last_trade[sym] = (t.a, ts)
        out.trades.append(
            Trade(self.exchange, symbol, str(t.a), price, amount, "sell" if t.m else "buy", ts, recv_ts)
        )
        self.counters.trades += 1

    def admit_backfill(self, native: str, trades: list[Trade], since_ts: int) -> list[Trade]:
        """Binance gaps are filled by id (`rest.fill_gap`), never caught up: only the time bound applies."""
        return sorted((t for t in trades if t.ts >= since_ts), key=lambda t: t.ts)
