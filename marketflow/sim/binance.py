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

Stream names, paths and what each stream sends live in `marketflow.sim.binance_streams`; their public
names are re-exported here. The sessions stay in this module: `SimServer.drop_connections` knows a venue's
sessions by their module's name.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec
import trio

from marketflow.sim.binance_streams import (
    DEPTH_INTERVALS_MS,
    EXCHANGE,
    MARKET_ROUTE,
    MARKETS,
    PUBLIC,
    SPOT,
    USDM,
    USDM_PREFIX,
    BinanceDepthStream,
    StreamSpec,
    WsTarget,
    agg_trade_encoder,
    is_ws_path,
    malformed_payload,
    parse_stream,
    parse_ws_target,
    split_fills,
    trade_encoder,
)
from marketflow.sim.book import BookStream, SimBook, depth_every
from marketflow.sim.bybit import BybitHost
from marketflow.sim.derivs import (
    BinanceBookTickerStream,
    BinanceForceOrderStream,
    BinanceMarkPriceStream,
    BinanceTickerStream,
)
from marketflow.sim.faults import MalformedKind
from marketflow.sim.market import channel_key

MAX_STREAMS = 1024
_MARKET_DATA = frozenset({"bookTicker", "ticker", "markPrice@1s", "forceOrder"})
MAX_MESSAGES_PER_S = {SPOT: 5, USDM: 10}
PING_INTERVAL_S = {SPOT: 20.0, USDM: 180.0}
PONG_TIMEOUT_S = {SPOT: 60.0, USDM: 600.0}
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
_STRING_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
_INT64 = (-(2**63), 2**63 - 1)
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
    "DEPTH_INTERVALS_MS",
    "EXCHANGE",
    "MARKETS",
    "MARKET_ROUTE",
    "MAX_MESSAGES_PER_S",
    "MAX_STREAMS",
    "PING_INTERVAL_S",
    "PONG_TIMEOUT_S",
    "PUBLIC",
    "SPOT",
    "USDM",
    "USDM_PREFIX",
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
