"""Binance spot and USD-M WebSocket streams, as the simulator speaks them (PROTOCOLS.md §2, §3, §6).

Paths (one port; the daemon is given a base URL per market):

- spot, base `ws://HOST:PORT`: `/ws`, `/ws/<stream>[/<stream>…]` (raw payloads), `/stream?streams=a/b`
  (combined: `{"stream":…,"data":…}`);
- USD-M, base `ws://HOST:PORT/usdm`: the same under `/usdm/public/…` (depth streams deliver) and
  `/usdm/market/…` (aggTrade, trade deliver), and unrouted `/usdm/ws…`, `/usdm/stream…`, which deliver only
  public streams. A stream on the wrong route is acknowledged and listed but never sends, like the live one.

Streams (symbols lower-case in names, upper-case in payloads): `<sym>@aggTrade`, `<sym>@trade`,
`<sym>@depth` and `<sym>@depth@100ms` (spot, 1000 / 100 ms), `<sym>@depth`, `@depth@500ms`, `@depth@100ms`
(USD-M, 250 / 500 / 100 ms). A depth interval is a whole number of book updates: `round(interval *
book_rate)`, so at the default 10 updates/s `@100ms` is one event per update. Spot diffs are contiguous
(`U` = previous `u` + 1); USD-M diffs carry `T` and `pu` (previous event's `u`) and skip ids between events.

Choices where the exchange's behaviour is unknown: an unknown or upper-case symbol, or an unknown stream
type, is `{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":…}` and the whole SUBSCRIBE is
refused; invalid streams in a URL refuse the handshake with HTTP 400. String ids may also contain `-`
(UUIDs are 36 characters). Going over the inbound message limit, the pong deadline or the 24 h lifetime
closes the connection with a close frame (1008, 1008, 1001).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec
import trio

from marketflow.sim.book import BookStream, BookTick, Crossing, SimBook, depth_every
from marketflow.sim.bybit import BybitHost
from marketflow.sim.derivs import (
    BinanceBookTickerStream,
    BinanceForceOrderStream,
    BinanceMarkPriceStream,
    BinanceTickerStream,
)
from marketflow.sim.faults import MalformedKind
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import (
    ROW_ID,
    ROW_LAST,
    ROW_PRICE,
    ROW_SEQ,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Formats,
    FrameEncoder,
    FrameSink,
    TradeRow,
    WireFrame,
    channel_key,
    instrument_for,
)

EXCHANGE = "binance"
SPOT = "spot"
USDM = "usdm"
MARKETS: tuple[str, ...] = (SPOT, USDM)
USDM_PREFIX = "/usdm"
PUBLIC = "public"
MARKET_ROUTE = "market"
MAX_STREAMS = 1024
_MARKET_DATA = frozenset({"bookTicker", "ticker", "markPrice@1s", "forceOrder"})
MAX_MESSAGES_PER_S = {SPOT: 5, USDM: 10}
PING_INTERVAL_S = {SPOT: 20.0, USDM: 180.0}
PONG_TIMEOUT_S = {SPOT: 60.0, USDM: 600.0}
DEPTH_INTERVALS_MS: dict[str, dict[str, int]] = {
    SPOT: {"depth": 1000, "depth@100ms": 100},
    USDM: {"depth": 250, "depth@500ms": 500, "depth@100ms": 100},
}
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
_STRING_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
_INT64 = (-(2**63), 2**63 - 1)


@attrs.frozen
class StreamSpec:
    """One valid stream name, parsed."""

    name: str
    symbol: str  # upper-case native
    kind: str  # "aggTrade", "trade" or "depth"
    route: str  # USD-M routing class: "public" or "market"
    interval_ms: int = 0  # depth only


def parse_stream(market: str, name: str, symbols: frozenset[str]) -> StreamSpec | None:
    """`name` parsed for `market`, or None if the venue does not know it."""
    lower, at, kind = name.partition("@")
    symbol = lower.upper()
    if not at or lower != lower.lower() or symbol not in symbols:
        return None
    if kind in ("aggTrade", "trade"):
        return StreamSpec(name, symbol, kind, MARKET_ROUTE)
    if kind == "bookTicker":
        return StreamSpec(name, symbol, kind, PUBLIC)
    if kind == "ticker" or (market == USDM and kind in ("markPrice@1s", "forceOrder")):
        return StreamSpec(name, symbol, kind, MARKET_ROUTE)
    interval = DEPTH_INTERVALS_MS[market].get(kind)
    if interval is None:
        return None
    return StreamSpec(name, symbol, "depth", PUBLIC, interval)


@attrs.frozen
class WsTarget:
    """What a WebSocket request path asks for."""

    market: str
    route: str | None  # USD-M "public" / "market"; None = spot, or unrouted USD-M
    combined: bool
    streams: tuple[str, ...]


def parse_ws_target(path: str, query: dict[str, list[str]]) -> WsTarget | None:
    """The Binance endpoint at `path`, or None if `path` is not one."""
    market = SPOT
    route: str | None = None
    if path.startswith(USDM_PREFIX + "/"):
        market = USDM
        path = path[len(USDM_PREFIX) :]
        for name in (PUBLIC, MARKET_ROUTE):
            if path.startswith("/" + name + "/"):
                route = name
                path = path[len(name) + 1 :]
                break
    if path == "/ws":
        return WsTarget(market, route, False, ())
    if path.startswith("/ws/"):
        return WsTarget(market, route, False, tuple(path[4:].split("/")))
    if path == "/stream":
        streams = query.get("streams", [""])[0]
        return WsTarget(market, route, True, tuple(streams.split("/")) if streams else ())
    return None


def is_ws_path(path: str) -> bool:
    return parse_ws_target(path, {}) is not None


# -- frames ---------------------------------------------------------------------------------------------


def _wrapper(stream: str, combined: bool) -> tuple[str, str]:
    return ('{"stream":"' + stream + '","data":', "}") if combined else ("", "")


_MAKER = {"Sell": "true", "Buy": "false"}  # `m`: the buyer is the maker, so the taker sold


def _frames(template: str, values: Callable[[TradeRow, int], tuple[object, ...]]) -> FrameEncoder:
    return lambda rows, ts: b"".join([ws_text_frame((template % values(r, ts)).encode()) for r in rows])


def _agg_values(r: TradeRow, ts: int) -> tuple[object, ...]:
    """(E, a, p, q, f, l, T, m) of one aggTrade."""
    return (ts, r[ROW_ID], r[ROW_PRICE], r[ROW_SIZE], r[ROW_SEQ], r[ROW_LAST], r[ROW_T], _MAKER[r[ROW_SIDE]])


def _usdm_agg_values(r: TradeRow, ts: int) -> tuple[object, ...]:
    """(E, a, p, q, nq, f, l, T, m): `nq` (q without RPI fills) equals `q`, the simulator has no RPI."""
    values = _agg_values(r, ts)
    return (*values[:4], r[ROW_SIZE], *values[4:])


def agg_trade_encoder(market: str, symbol: str, stream: str, combined: bool) -> FrameEncoder:
    """One WebSocket frame per aggTrade (live key order; spot has `M`, USD-M has `nq` and no `M`)."""
    head, tail = _wrapper(stream, combined)
    if market == SPOT:
        fields = '","a":%s,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}'
        return _frames(head + '{"e":"aggTrade","E":%d,"s":"' + symbol + fields + tail, _agg_values)
    fields = '","p":"%s","q":"%s","nq":"%s","f":%d,"l":%d,"T":%d,"m":%s}'
    return _frames(head + '{"e":"aggTrade","E":%d,"a":%s,"s":"' + symbol + fields + tail, _usdm_agg_values)


def split_fills(formats: Formats, row: TradeRow) -> list[tuple[int, str]]:
    """The individual trades (id, size) of one aggTrade: its size spread evenly over `f`..`l`."""
    first, last = row[ROW_SEQ], row[ROW_LAST]
    count = last - first + 1
    base, extra = divmod(formats.size_steps(row[ROW_SIZE]), count)
    return [(first + n, formats.size(base + (1 if n < extra else 0))) for n in range(count)]


def trade_encoder(market: str, symbol: str, stream: str, combined: bool) -> FrameEncoder:
    """One frame per individual trade; the fills of an aggTrade share its price, side and time."""
    head, tail = _wrapper(stream, combined)
    formats = Formats(instrument_for(market, symbol, EXCHANGE))
    spot = market == SPOT
    if spot:
        template = '{"e":"trade","E":%d,"s":"' + symbol + '","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}'
    else:  # the USD-M shape seen live; `X` and `st` copied as seen
        template = (
            '{"e":"trade","E":%d,"T":%d,"s":"'
            + symbol
            + '","t":%d,"p":"%s","q":"%s","X":"MARKET","m":%s,"st":1}'
        )
    template = head + template + tail

    def encode(rows: list[TradeRow], ts: int) -> bytes:
        frames = []
        for r in rows:
            price, t, maker = r[ROW_PRICE], r[ROW_T], _MAKER[r[ROW_SIDE]]
            for trade_id, size in split_fills(formats, r):
                values = (
                    (ts, trade_id, price, size, t, maker) if spot else (ts, t, trade_id, price, size, maker)
                )
                frames.append(ws_text_frame((template % values).encode()))
        return b"".join(frames)

    return encode


def _levels(formats: Formats, changes: dict[int, int], descending: bool) -> str:
    price = formats.price
    size = formats.size
    prices = formats.prices
    sizes = formats.sizes
    return ",".join(
        [
            '["' + (prices.get(p) or price(p)) + '","' + (sizes.get(q) or size(q)) + '"]'
            for p, q in sorted(changes.items(), reverse=descending)
        ]
    )


class BinanceDepthStream:
    """`<sym>@depth[@Nms]` on one book: the net changes of `every` book updates per `depthUpdate` event."""

    def __init__(self, market: str, spec: StreamSpec, every: int, book: SimBook) -> None:
        self.market = market
        self.name = spec.name
        self.every = max(1, every)
        self.book = book
        self.formats = Formats(book.instrument)
        self.skipped = 0
        self._sinks: dict[FrameSink, bool] = {}  # sink → wants the combined wrapper
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}
        self._count = 0
        self._first_id = 0
        self._skip = False
        self._crossing = Crossing()
        self._cross_size = max(1, int(book.instrument.mean_size_steps))
        self._prev_u = book.last_id
        symbol = book.symbol
        if market == SPOT:
            self._head = '{"e":"depthUpdate","E":%d,"s":"' + symbol + '","U":%d,"u":%d,"b":['
        else:
            self._head = '{"e":"depthUpdate","E":%d,"T":%d,"s":"' + symbol + '","U":%d,"u":%d,"pu":%d,"b":['

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> list[FrameSink]:
        return list(self._sinks)

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: a fresh window from the next update
            self._count = 0
            self._prev_u = self.book.last_id
        self._sinks[sink] = combined
        return None

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.pop(sink, None)

    def crossing_outstanding(self) -> bool:
        return self._crossing.outstanding

    def on_idle(self, ts_ms: int) -> None:
        """Binance sends nothing between updates."""

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self._count == 0:
            self._first_id = tick.first_id
            self._bids = {}
            self._asks = {}
            self._skip = False
        self._bids.update(tick.bids)
        self._asks.update(tick.asks)
        self._skip = self._skip or tick.skip
        self._crossing.pending = self._crossing.pending or tick.cross
        self._count += 1
        if self._count < self.every:
            return
        self._count = 0
        first, last, prev = self._first_id, tick.last_id, self._prev_u
        self._prev_u = last
        if self._skip:  # generated, not sent: the next event's U / pu shows the gap
            self.skipped += 1
            return
        if self._crossing.outstanding:
            book = self.book
            self._crossing.apply(book.bids, book.best_ask(), self._cross_size, self._bids)
        if self.market == SPOT:
            head = self._head % (ts_ms, first, last)
        else:
            head = self._head % (ts_ms, ts_ms - 1, first, last, prev)
        payload = (
            head
            + _levels(self.formats, self._bids, True)
            + '],"a":['
            + _levels(self.formats, self._asks, False)
            + "]}"
        )
        raw: list[WireFrame] | None = None
        combined: list[WireFrame] | None = None
        for sink, wrapped in self._sinks.items():
            if wrapped:
                if combined is None:
                    text = '{"stream":"' + self.name + '","data":' + payload + "}"
                    combined = [WireFrame(ws_text_frame(text.encode()), channel_key(self.name, True))]
                sink.push_frames(combined)
            else:
                if raw is None:
                    raw = [WireFrame(ws_text_frame(payload.encode()), self.name)]
                sink.push_frames(raw)


def malformed_payload(
    kind: MalformedKind, market: str, symbol: str, ts_ms: int, stream: str | None
) -> tuple[bytes, bool]:
    """A broken aggTrade-like frame of `kind` (wrapped when `stream` names a combined stream)."""
    if kind is MalformedKind.NOT_JSON:
        return b"simulated garbage <not json> " + symbol.encode(), False
    if kind is MalformedKind.BINARY:
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffsimulated binary frame", True
    event: dict[str, Any]
    if kind is MalformedKind.UNKNOWN_TOPIC:
        event = {"e": "simUnknown", "E": ts_ms, "s": symbol}
    else:
        event = {"e": "aggTrade", "E": ts_ms, "s": symbol, "a": 0, "p": "1.0", "q": "1.0"}
        event |= {"f": 0, "l": 0, "T": ts_ms, "m": False}
        if market == SPOT:
            event["M"] = True
        if kind is MalformedKind.BAD_PRICE:
            event["p"] = "abc"
        elif kind is MalformedKind.MISSING_SIDE:
            del event["m"]
    frame: Any = event if stream is None else {"stream": stream, "data": event}
    payload = msgspec.json.encode(frame)
    if kind is MalformedKind.TRUNCATED_JSON:
        payload = payload[: len(payload) // 2]
    return payload, False


# -- sessions -------------------------------------------------------------------------------------------


class BinanceHost(BybitHost, Protocol):
    """What a Binance session needs from its connection, beyond what a Bybit one does."""

    def send_ping(self, payload: bytes) -> None:
        """Send a WebSocket ping frame."""

    def close(self, code: int, reason: str, after: float = 0.0) -> None:
        """Close the connection (close frame, then cut) after `after` seconds."""

    def note_rate_limited(self) -> None: ...


@attrs.frozen
class BinanceRules:
    """One market's limits and listings, from the simulator's config."""

    market: str
    symbols: frozenset[str]
    ping_interval_s: float
    pong_timeout_s: float
    max_lifetime_s: float
    book_rate: float
    reject_streams: frozenset[str] = frozenset()
    out_of_order_every: int | None = None

    @property
    def max_messages_per_s(self) -> int:
        return MAX_MESSAGES_PER_S[self.market]


def validate_streams(rules: BinanceRules, names: tuple[str, ...]) -> list[StreamSpec] | None:
    """Parsed `names`, or None if any is invalid (unknown, or refused by the `reject_topics` fault)."""
    specs = []
    for name in names:
        spec = parse_stream(rules.market, name, rules.symbols)
        if spec is None or name in rules.reject_streams:
            return None
        specs.append(spec)
    return specs


_decode_request = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return isinstance(value, str) and _STRING_ID.fullmatch(value) is not None


class BinanceSession:
    """One client connection's Binance conversation: control messages, limits, pings, lifetime."""

    def __init__(self, rules: BinanceRules, target: WsTarget, host: BinanceHost) -> None:
        self.rules = rules
        self.market = rules.market
        self.route = target.route
        self.combined = target.combined
        self.host = host
        self.streams: dict[str, StreamSpec] = {}  # in subscription order
        self.closing = False
        self._inbound: collections.deque[float] = collections.deque()
        self._pings: dict[bytes, float] = {}
        self._ping_number = 0

    def open(self, specs: list[StreamSpec]) -> None:
        """Subscribe the streams named in the URL."""
        for spec in specs:
            if spec.name not in self.streams:
                self.streams[spec.name] = spec
                self._attach(spec)

    # -- replies -------------------------------------------------------------------------------------

    def _result(self, result: Any, req_id: Any) -> None:
        self.host.send_control(_encode.encode({"result": result, "id": req_id}))

    def _error(self, code: int, msg: str, req_id: Any) -> None:
        self.host.send_control(_encode.encode({"error": {"code": code, "msg": msg}, "id": req_id}))

    def server_shutdown(self, ts_ms: int, close_after: float) -> None:
        event = '{"e":"serverShutdown","E":%d}' % ts_ms  # noqa: UP031
        if self.combined:
            event = '{"stream":"!serverShutdown","data":' + event + "}"
        self.host.send_control(event.encode())
        self._close(CLOSE_GOING_AWAY, "server shutdown", close_after)

    def _close(self, code: int, reason: str, after: float = 0.0) -> None:
        if not self.closing:
            self.closing = True
            self.host.close(code, reason, after)

    # -- incoming ------------------------------------------------------------------------------------

    def _count_inbound(self) -> bool:
        """Count one client message (data, ping or pong); False once the connection is over its limit."""
        if self.closing:
            return False
        now = trio.current_time()
        inbound = self._inbound
        inbound.append(now)
        while inbound[0] <= now - 1.0:
            inbound.popleft()
        if len(inbound) > self.rules.max_messages_per_s:
            self.host.note_rate_limited()
            self._close(CLOSE_POLICY, "Too many requests")
            return False
        return True

    def on_control(self, ping: bool, payload: bytes) -> None:
        """A ping (answered by the protocol) or pong frame from the client."""
        if not self._count_inbound():
            return
        if not ping:
            sent = self._pings.get(payload)
            if sent is not None:  # unsolicited pongs (no matching ping) do not count
                self._pings = {p: t for p, t in self._pings.items() if t > sent}

    def on_message(self, data: bytes | str) -> None:
        if not self._count_inbound():
            return
        try:
            msg = _decode_request.decode(data)
        except msgspec.DecodeError as exc:
            self._error(3, "Invalid JSON: " + str(exc), None)
            return
        if not isinstance(msg, dict):
            self._error(2, "Invalid request: expected a JSON object", None)
            return
        req_id = msg.get("id")
        if not _valid_id(req_id):
            self._error(
                2,
                "Invalid request: request ID must be a signed 64-bit integer, an alphanumeric string of "
                "at most 36 characters, or null",
                None,
            )
            return
        method = msg.get("method")
        if method is None:
            self._error(2, "Invalid request: missing field `method`", req_id)
        elif method not in METHODS:
            expected = ", ".join("`" + m + "`" for m in METHODS)
            self._error(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", req_id)
        elif method == "LIST_SUBSCRIPTIONS":
            self._result(list(self.streams), req_id)
        elif method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            params = msg.get("params", [])
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                self._error(2, "Invalid request: params must be an array of stream names", req_id)
            elif method == "SUBSCRIBE":
                self._subscribe(params, req_id)
            else:
                self._unsubscribe(params, req_id)
        else:
            self._property(method, msg.get("params"), req_id)

    def _subscribe(self, names: list[str], req_id: Any) -> None:
        specs = validate_streams(self.rules, tuple(names))
        if specs is None:
            self.host.note_subscribes(0, len(names))
            self._error(2, "Invalid request: invalid stream", req_id)
            return
        new = list({spec.name: spec for spec in specs if spec.name not in self.streams}.values())
        if len(self.streams) + len(new) > MAX_STREAMS:
            self.host.note_subscribes(0, len(names))
            self._error(4, "Too many subscriptions", req_id)
            return
        self.host.note_subscribes(len(new), 0)
        self._result(None, req_id)
        for spec in new:
            self.streams[spec.name] = spec
            self._attach(spec)

    def _unsubscribe(self, names: list[str], req_id: Any) -> None:
        if validate_streams(self.rules, tuple(names)) is None:
            self._error(2, "Invalid request: invalid stream", req_id)
            return
        for name in names:
            spec = self.streams.pop(name, None)
            if spec is not None and self._delivers(spec):
                self.host.unsubscribe(channel_key(name, self.combined))
        self._result(None, req_id)

    def _property(self, method: str, params: Any, req_id: Any) -> None:
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            self._error(2, "Invalid request: params must name a property", req_id)
        elif params[0] != "combined":
            self._error(0, "Unknown property", req_id)
        elif method == "GET_PROPERTY":
            self._result(self.combined, req_id)
        elif len(params) != 2 or not isinstance(params[1], bool):
            self._error(1, "Invalid value type: expected Boolean", req_id)
        else:
            if params[1] != self.combined:
                for spec in self.streams.values():
                    if self._delivers(spec):
                        self.host.unsubscribe(channel_key(spec.name, self.combined))
                self.combined = params[1]
                for spec in self.streams.values():
                    self._attach(spec)
            self._result(None, req_id)

    # -- streams -------------------------------------------------------------------------------------

    def _delivers(self, spec: StreamSpec) -> bool:
        if self.market == SPOT:
            return True
        return spec.route == (self.route or PUBLIC)

    def _attach(self, spec: StreamSpec) -> None:
        if not self._delivers(spec):
            return  # acknowledged and listed, never sends (wrong USD-M route)
        market, combined, name, symbol = self.market, self.combined, spec.name, spec.symbol
        channel = channel_key(name, combined)
        if spec.kind == "aggTrade":
            self.host.subscribe_trades(
                EXCHANGE, market, symbol, channel, lambda: agg_trade_encoder(market, symbol, name, combined)
            )
        elif spec.kind == "trade":
            self.host.subscribe_trades(
                EXCHANGE, market, symbol, channel, lambda: trade_encoder(market, symbol, name, combined)
            )
        elif spec.kind in _MARKET_DATA:
            self.host.subscribe_book(EXCHANGE, market, symbol, name, combined, self._market_data(spec))
        else:
            every = depth_every(spec.interval_ms, self.rules.book_rate)
            factory: Callable[[SimBook], BookStream] = lambda book: BinanceDepthStream(  # noqa: E731
                market, spec, every, book
            )
            self.host.subscribe_book(EXCHANGE, market, symbol, name, combined, factory)

    def _market_data(self, spec: StreamSpec) -> Callable[[SimBook], BookStream]:
        rate, late, market = self.rules.book_rate, self.rules.out_of_order_every, self.market
        if spec.kind == "bookTicker":
            return lambda book: BinanceBookTickerStream(market, book, late)
        if spec.kind == "ticker":
            return lambda book: BinanceTickerStream(book, rate)
        if spec.kind == "markPrice@1s":
            return lambda book: BinanceMarkPriceStream(book, rate, late)
        return lambda book: BinanceForceOrderStream(book, rate)

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
        stream = symbol.lower() + "@aggTrade" if self.combined else None
        return malformed_payload(kind, self.market, symbol, ts_ms, stream)

    # -- timers --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Protocol pings with a pong deadline, and the connection lifetime; until the connection ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping_loop)
            await trio.sleep(self.rules.max_lifetime_s)
            self._close(CLOSE_GOING_AWAY, "connection lifetime exceeded")
            nursery.cancel_scope.cancel()

    async def _ping_loop(self) -> None:
        interval = self.rules.ping_interval_s
        timeout = self.rules.pong_timeout_s
        next_ping = trio.current_time() + interval
        while not self.closing:
            oldest = min(self._pings.values(), default=None)
            deadline = next_ping if oldest is None else min(next_ping, oldest + timeout)
            await trio.sleep_until(deadline)
            now = trio.current_time()
            oldest = min(self._pings.values(), default=None)
            if oldest is not None and now >= oldest + timeout:
                self._close(CLOSE_POLICY, "pong timeout")
                return
            if now >= next_ping:
                self._ping_number += 1
                payload = b"%d" % self._ping_number
                self._pings[payload] = now
                self.host.send_ping(payload)
                next_ping += interval


__all__ = [
    "EXCHANGE",
    "MARKETS",
    "MAX_MESSAGES_PER_S",
    "MAX_STREAMS",
    "PING_INTERVAL_S",
    "PONG_TIMEOUT_S",
    "SPOT",
    "USDM",
    "BinanceDepthStream",
    "BinanceHost",
    "BinanceRules",
    "BinanceSession",
    "StreamSpec",
    "WsTarget",
    "agg_trade_encoder",
    "is_ws_path",
    "malformed_payload",
    "parse_stream",
    "parse_ws_target",
    "split_fills",
    "trade_encoder",
    "validate_streams",
]
