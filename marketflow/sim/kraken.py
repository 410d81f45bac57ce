"""Kraken WebSocket v2 and the public REST it needs, as the simulator speaks them (PROTOCOLS.md §10).

Pairs: every listed symbol `BTCUSDT` gives `BTC/USDT` and `BTC/USD`, plus `quiet` pairs that never trade or
change (only heartbeats keep their connection busy). `/v2` takes `{"method":"subscribe"|"unsubscribe",
"params":{"channel",...,"symbol":[...]},"req_id"}` and acks each symbol on its own (an unknown or refused
pair gets `success: false` naming it, the others unaffected); `{"method":"ping"}` gets `pong`; a status
message greets each connection and `{"channel":"heartbeat"}` follows every `heartbeat_s` while subscribed.

- `trade`: one row per trade, `trade_id` contiguous per pair, `side` = the taker's; `snapshot: true` first
  sends the last 50 trades already generated (type `snapshot`).
- `book` (depth 10|25|100|500|1000): a snapshot of the top `depth`, then updates with only what changed in
  that window. A level pushed below the depth by an insert gets no qty-0 message (the client truncates);
  a level really removed gets qty 0, and the level that enters from below is sent. Every message carries
  the unsigned CRC32 of the top 10 asks then bids, each price and qty at the pair's precision with the
  `.` removed and leading zeros stripped — computed from the integer ticks and steps, not from text.
  Prices are JSON numbers with trailing zeros, and BTC pairs send one digit more than their precision
  (`45285.20` at precision 1), as Kraken's older feeds did. Faults: a wrong checksum (`bad_checksum`), a
  skipped update (the next checksum then fails on the client), a quiet pair.
- `instrument`: a snapshot of every listed pair's `price_precision`/`qty_precision`.
- `ticker`: a snapshot, then every change of the touch, each message carrying every field.
- REST: `/0/public/Trades?pair=&since=&count=` (rows with trade ids, `since` in ns, exclusive) and
  `/0/public/AssetPairs`; a burst of 15 calls, then one per second (`EAPI:Rate limit exceeded`, 429).

What the channels send (trade rows, book windows and their checksum, ticker) lives in
`marketflow.sim.kraken_streams`, the REST routes in `marketflow.sim.kraken_rest`; their public names are
re-exported here. The sessions stay in this module: `SimServer.drop_connections` knows a venue's sessions
by their module's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec
import trio

from marketflow.model import SymbolError, split_native
from marketflow.sim.faults import MalformedKind
from marketflow.sim.host import StreamHost
from marketflow.sim.http import ws_text_frame
from marketflow.sim.kraken_rest import KrakenRest, altname
from marketflow.sim.kraken_streams import (
    CHECKSUM_LEVELS,
    KrakenBookStream,
    KrakenTickerStream,
    TradeEncoder,
    checksum_of,
    rfc3339,
)
from marketflow.sim.market import (
    Formats,
    Market,
    WireFrame,
    stable_crc,
)

EXCHANGE = "kraken"
SPOT = "spot"
MARKETS: tuple[str, ...] = (SPOT,)
WS_PATH = "/v2"
DEPTHS = (10, 25, 100, 500, 1000)
TRADE_SNAPSHOT = 50
HEARTBEAT_S = 1.0
DEFAULT_HEARTBEAT_S: float | None = HEARTBEAT_S


def pairs(symbols: tuple[str, ...] | frozenset[str]) -> tuple[str, ...]:
    """The v2 pairs listed for the simulator's symbols (`BTCUSDT` → `BTC/USDT`, `BTC/USD`)."""
    out: set[str] = set()
    for symbol in symbols:
        try:
            base, quote = split_native(symbol)
        except SymbolError:
            continue
        out.update((f"{base}/{quote}", f"{base}/USD"))
    return tuple(sorted(out))


@attrs.frozen
class KrakenRules:
    """What the venue lists and refuses, from the simulator's config."""

    pairs: tuple[str, ...]
    quiet: frozenset[str] = frozenset()
    reject_topics: frozenset[str] = frozenset()
    heartbeat_s: float | None = HEARTBEAT_S

    @property
    def listed(self) -> frozenset[str]:
        return frozenset(self.pairs) | self.quiet


# -- the WebSocket session ---------------------------------------------------------------------------


class KrakenHost(StreamHost, Protocol):
    """What a Kraken session needs from its connection, beyond `StreamHost`."""

    def push_frames(self, frames: list[WireFrame]) -> None: ...

    def note_ping(self) -> None: ...


_decode_request = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class KrakenSession:
    """One client connection's Kraken v2 conversation."""

    def __init__(self, number: int, host: KrakenHost, rules: KrakenRules, market: Market) -> None:
        self.host = host
        self.rules = rules
        self.market = market
        self.connection_id = stable_crc("kraken:%d" % number)  # noqa: UP031
        self.topics: set[str] = set()
        self.heartbeats = 0

    def _reply(self, body: dict[str, Any]) -> None:
        now = rfc3339(time.time_ns() // 1_000_000)
        body |= {"time_in": now, "time_out": now}
        self.host.send_control(_encode.encode(body))

    def _error(self, method: Any, req_id: Any, error: str, symbol: str | None = None) -> None:
        body: dict[str, Any] = {"error": error, "method": method, "success": False}
        if symbol is not None:
            body["symbol"] = symbol
        if req_id is not None:
            body["req_id"] = req_id
        self._reply(body)

    def on_message(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        try:
            msg = _decode_request.decode(raw)
        except msgspec.DecodeError:
            self._error(None, None, "Malformed request")
            return
        if not isinstance(msg, dict):
            self._error(None, None, "Malformed request")
            return
        method = msg.get("method")
        req_id = msg.get("req_id")
        if req_id is not None and not isinstance(req_id, int):
            self._error(method, None, "req_id must be an integer")
            return
        if method == "ping":
            self.host.note_ping()
            self._reply({"method": "pong"} | ({} if req_id is None else {"req_id": req_id}))
            return
        params = msg.get("params")
        if method not in ("subscribe", "unsubscribe") or not isinstance(params, dict):
            self._error(
                method,
                req_id,
                "Invalid method" if method not in ("subscribe", "unsubscribe") else "Invalid params",
            )
            return
        channel = params.get("channel")
        if channel == "instrument":
            self._instrument(method, req_id, params)
            return
        symbols = params.get("symbol")
        if channel not in ("trade", "book", "ticker") or not isinstance(symbols, list) or not symbols:
            self._error(method, req_id, f"Invalid channel or symbol list: {channel!r}")
            return
        depth = params.get("depth", 10)
        if channel == "book" and depth not in DEPTHS:
            self._error(method, req_id, f"Unsupported depth {depth!r}")
            return
        for symbol in symbols:
            if method == "subscribe":
                self._subscribe(channel, symbol, depth, params.get("snapshot", channel == "book"), req_id)
            else:
                self._unsubscribe(channel, symbol, depth, req_id)

    def _instrument(self, method: str, req_id: Any, params: dict[str, Any]) -> None:
        result = {"channel": "instrument", "snapshot": params.get("snapshot", True)}
        self._reply({"method": method, "result": result, "success": True} | _req(req_id))
        if method != "subscribe":
            self.topics.discard("instrument")
            return
        self.topics.add("instrument")
        rows = []
        for native in sorted(self.rules.listed):
            spec = self.market.tape(SPOT, native, EXCHANGE).instrument
            base, quote = native.split("/")
            step = Formats(spec).size(1)
            tick = _decimal_text(spec.tick_decimals)
            rows.append(
                '{"symbol":"%s","base":"%s","quote":"%s","status":"online","qty_precision":%d,'  # noqa: UP031
                '"qty_increment":%s,"price_precision":%d,"cost_precision":5,"marginable":false,'
                '"has_index":true,"cost_min":0.5,"tick_size":%s,"price_increment":%s,"qty_min":%s}'
                % (native, base, quote, spec.size_decimals, step, spec.tick_decimals, tick, tick, step)
            )
        body = (
            '{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[' + ",".join(rows) + "]}}"
        )
        self.host.push_frames([WireFrame(ws_text_frame(body.encode()), "instrument")])

    def _subscribe(self, channel: str, symbol: Any, depth: int, snapshot: Any, req_id: Any) -> None:
        topic = f"book:{depth}:{symbol}" if channel == "book" else f"{channel}:{symbol}"
        if (
            not isinstance(symbol, str)
            or symbol not in self.rules.listed
            or topic in self.rules.reject_topics
        ):
            self.host.note_subscribes(0, 1)
            self._error("subscribe", req_id, f"Currency pair not supported {symbol}", str(symbol))
            return
        self.host.note_subscribes(1, 0)
        result: dict[str, Any] = {"channel": channel, "snapshot": bool(snapshot), "symbol": symbol}
        if channel == "book":
            result["depth"] = depth
        self._reply({"method": "subscribe", "result": result, "success": True} | _req(req_id))
        if topic in self.topics:
            return
        self.topics.add(topic)
        quiet = symbol in self.rules.quiet
        if channel == "trade":
            tape = self.market.tape(SPOT, symbol, EXCHANGE)
            latest = tape.history.latest(TRADE_SNAPSHOT) if snapshot else []
            if latest:
                payload = TradeEncoder(symbol).payload(latest, "snapshot")
                self.host.push_frames([WireFrame(ws_text_frame(payload), topic)])
            if not quiet:
                self.host.subscribe_trades(EXCHANGE, SPOT, symbol, topic, lambda: TradeEncoder(symbol))
        elif channel == "ticker":
            tape = self.market.tape(SPOT, symbol, EXCHANGE)
            self.host.subscribe_book(
                EXCHANGE,
                SPOT,
                symbol,
                topic,
                False,
                lambda book: KrakenTickerStream(topic, book, tape, quiet),
            )
        else:
            self.host.subscribe_book(
                EXCHANGE, SPOT, symbol, topic, False, lambda book: KrakenBookStream(topic, depth, book, quiet)
            )

    def _unsubscribe(self, channel: str, symbol: Any, depth: int, req_id: Any) -> None:
        topic = f"book:{depth}:{symbol}" if channel == "book" else f"{channel}:{symbol}"
        if topic not in self.topics:
            self._error("unsubscribe", req_id, "Subscription Not Found", str(symbol))
            return
        self.topics.discard(topic)
        self.host.unsubscribe(topic)
        result: dict[str, Any] = {"channel": channel, "symbol": symbol}
        if channel == "book":
            result["depth"] = depth
        self._reply({"method": "unsubscribe", "result": result, "success": True} | _req(req_id))

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
        if kind is MalformedKind.NOT_JSON:
            return b"simulated garbage <not json> " + symbol.encode(), False
        if kind is MalformedKind.BINARY:
            return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffsimulated binary frame", True
        trade: dict[str, Any] = {
            "symbol": symbol,
            "side": "buy",
            "price": 1.0,
            "qty": 1,
            "ord_type": "market",
        }
        trade |= {"trade_id": 1, "timestamp": rfc3339(ts_ms)}
        channel = "trade"
        if kind is MalformedKind.UNKNOWN_TOPIC:
            channel = "sim-unknown"
        elif kind is MalformedKind.BAD_PRICE:
            trade["price"] = "abc"
        elif kind is MalformedKind.MISSING_SIDE:
            del trade["side"]
        payload = _encode.encode({"channel": channel, "type": "update", "data": [trade]})
        if kind is MalformedKind.TRUNCATED_JSON:
            payload = payload[: len(payload) // 2]
        return payload, False

    def on_control(self, ping: bool, payload: bytes) -> None:
        """Protocol pings are answered by the protocol."""

    async def run(self) -> None:
        """The greeting, then a heartbeat every `heartbeat_s` while anything is subscribed."""
        status = {"api_version": "v2", "connection_id": self.connection_id, "system": "online"}
        status |= {"version": "2.0.0"}
        self.host.send_control(_encode.encode({"channel": "status", "data": [status], "type": "update"}))
        interval = self.rules.heartbeat_s
        if interval is None:
            return
        while True:
            await trio.sleep(interval)
            if self.topics:
                self.heartbeats += 1
                self.host.send_control(b'{"channel":"heartbeat"}')


def _req(req_id: Any) -> dict[str, Any]:
    return {} if req_id is None else {"req_id": req_id}


def _decimal_text(decimals: int) -> str:
    return "1" if decimals <= 0 else "0." + "0" * (decimals - 1) + "1"


class KrakenSim:
    """The simulator's Kraken: its rules, REST routes, sessions and fault switches."""

    def __init__(
        self,
        market: Market,
        symbols: tuple[str, ...],
        book_source: Callable[[str, str, str], Any],
        *,
        quiet: tuple[str, ...] = (),
        reject_topics: frozenset[str] = frozenset(),
        heartbeat_s: float | None = HEARTBEAT_S,
    ) -> None:
        self.market = market
        self.rules = KrakenRules(pairs(symbols), frozenset(quiet), reject_topics, heartbeat_s)
        self.rest = KrakenRest(market, self.rules.listed)
        self._book_source = book_source

    @property
    def listed(self) -> tuple[str, ...]:
        return tuple(sorted(self.rules.listed))

    def session(self, number: int, host: KrakenHost) -> KrakenSession:
        return KrakenSession(number, host, self.rules, self.market)

    def streams(self, native: str) -> list[KrakenBookStream]:
        feed = self._book_source(EXCHANGE, SPOT, native)
        return [s for s in feed.streams.values() if isinstance(s, KrakenBookStream)]

    def bad_checksum(self, native: str) -> None:
        """The pair's next book message (every depth) carries a wrong checksum."""
        for stream in self.streams(native):
            stream.bad_checksum_next = True


__all__ = [
    "CHECKSUM_LEVELS",
    "EXCHANGE",
    "MARKETS",
    "WS_PATH",
    "KrakenBookStream",
    "KrakenRest",
    "KrakenRules",
    "KrakenSession",
    "KrakenSim",
    "KrakenTickerStream",
    "TradeEncoder",
    "altname",
    "checksum_of",
    "pairs",
    "rfc3339",
]
