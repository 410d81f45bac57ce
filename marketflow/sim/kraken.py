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
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec
import trio

from marketflow.model import SymbolError, split_native
from marketflow.sim.book import BookStream, BookTick, SimBook
from marketflow.sim.derivs import SENT_KEPT, DerivsModel
from marketflow.sim.faults import MalformedKind
from marketflow.sim.http import ws_text_frame
from marketflow.sim.kraken_rest import KrakenRest, altname
from marketflow.sim.market import (
    ROW_ID,
    ROW_PRICE,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Formats,
    FrameEncoder,
    FrameSink,
    Market,
    TradeRow,
    WireFrame,
    stable_crc,
)

EXCHANGE = "kraken"
SPOT = "spot"
MARKETS: tuple[str, ...] = (SPOT,)
WS_PATH = "/v2"
DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
TRADE_SNAPSHOT = 50
HEARTBEAT_S = 1.0
DEFAULT_HEARTBEAT_S: float | None = HEARTBEAT_S
_SIDES = {"Buy": "buy", "Sell": "sell"}


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


def checksum_of(bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> int:
    """Kraken's unsigned CRC32 of the top 10 asks then bids (best first), from ticks and steps: a price
    at its precision with the `.` and leading zeros removed is its tick count, a qty its step count."""
    text = "".join(
        [f"{p}{q}" for p, q in asks[:CHECKSUM_LEVELS]] + [f"{p}{q}" for p, q in bids[:CHECKSUM_LEVELS]]
    )
    return zlib.crc32(text.encode())


_second_text: dict[int, str] = {}


def rfc3339(ms: int) -> str:
    """`2023-09-25T07:49:37.708000Z` (Kraken writes microseconds)."""
    seconds, millis = divmod(ms, 1000)
    head = _second_text.get(seconds)
    if head is None:
        if len(_second_text) > 4096:
            _second_text.clear()
        head = _second_text[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return "%s.%03d000Z" % (head, millis)  # noqa: UP031


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


# -- trades ----------------------------------------------------------------------------------------------


class TradeEncoder:
    """`trade` messages of one pair: numbers as JSON numbers exactly as formatted (trailing zeros)."""

    def __init__(self, native: str) -> None:
        self.native = native
        self._trade = (
            '{"symbol":"' + native + '","side":"%s","price":%s,"qty":%s,"ord_type":"%s","trade_id":%s,'
            '"timestamp":"%s"}'
        )

    def payload(self, rows: list[TradeRow], kind: str = "update") -> bytes:
        trade = self._trade
        body = ",".join(
            [
                trade
                % (
                    _SIDES[r[ROW_SIDE]],
                    r[ROW_PRICE],
                    r[ROW_SIZE],
                    "limit" if r[ROW_T] % 3 == 0 else "market",
                    r[ROW_ID],
                    rfc3339(r[ROW_T]),
                )
                for r in rows
            ]
        )
        return ('{"channel":"trade","type":"' + kind + '","data":[' + body + "]}").encode()

    def __call__(self, rows: list[TradeRow], ts_ms: int) -> bytes:
        return ws_text_frame(self.payload(rows))


# -- books -----------------------------------------------------------------------------------------------


class KrakenBookStream:
    """`book` at one depth of one pair: the window the client must hold, and what changed in it."""

    def __init__(self, topic: str, depth: int, book: SimBook, quiet: bool) -> None:
        self.topic = topic
        self.depth = depth
        self.book = book
        self.quiet = quiet
        self.formats = Formats(book.instrument)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bad_checksum_next = False
        self.skipped = 0
        self.messages = 0
        self._sinks: set[FrameSink] = set()
        self._skip = 0
        self._symbol = book.symbol

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: publish the book as it is now
            self.bids, self.asks = self.book.top_maps(self.depth)
        self._sinks.add(sink)
        return self._frame("snapshot", self.bids, self.asks, int(time.time_ns() // 1_000_000))

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def _levels(self, levels: list[tuple[int, int]]) -> str:
        price = self.formats.price
        size = self.formats.size
        return ",".join(
            ['{"price":%s,"qty":%s}' % (price(p), size(q) if q else "0") for p, q in levels]  # noqa: UP031
        )

    def checksum(self) -> int:
        bids = sorted(self.bids.items(), reverse=True)[:CHECKSUM_LEVELS]
        asks = sorted(self.asks.items())[:CHECKSUM_LEVELS]
        return checksum_of(bids, asks)

    def _frame(self, kind: str, bids: dict[int, int], asks: dict[int, int], ts_ms: int) -> WireFrame:
        crc = self.checksum()
        if self.bad_checksum_next:
            self.bad_checksum_next = False
            crc ^= 1
        body = (
            '{"channel":"book","type":"%s","data":[{"symbol":"%s","bids":[%s],"asks":[%s],"checksum":%d,'  # noqa: UP031
            '"timestamp":"%s"}]}'
            % (
                kind,
                self._symbol,
                self._levels(sorted(bids.items(), reverse=True)),
                self._levels(sorted(asks.items())),
                crc,
                rfc3339(ts_ms),
            )
        )
        self.messages += 1
        return WireFrame(ws_text_frame(body.encode()), self.topic)

    def _changes(self, before: dict[int, int], now: dict[int, int], full: dict[int, int]) -> dict[int, int]:
        changes = {p: q for p, q in now.items() if before.get(p) != q}
        # Left the window: a real removal says qty 0; a level only pushed below the depth says nothing.
        changes.update({p: 0 for p in before.keys() - now.keys() if p not in full})
        return changes

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self.quiet:
            return
        if tick.skip:
            self._skip += 1
        bids, asks = self.book.top_maps(self.depth)
        bid_changes = self._changes(self.bids, bids, self.book.bids)
        ask_changes = self._changes(self.asks, asks, self.book.asks)
        self.bids, self.asks = bids, asks
        if not bid_changes and not ask_changes:
            return
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return
        frames = [self._frame("update", bid_changes, ask_changes, ts_ms)]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_idle(self, ts_ms: int) -> None:
        """Kraken sends nothing for an unchanged book (the connection's heartbeats keep it alive)."""

    def crossing_outstanding(self) -> bool:
        return False


class KrakenTickerStream:
    """`ticker` of one pair: a snapshot on subscribe, then an update whenever the best bid or ask changes
    (Kraken's `event_trigger: bbo`; its default, per trade, differs only in cadence). Every message carries
    every field; `last` is the tape's latest trade, `volume` the book model's 24 h volume."""

    def __init__(self, topic: str, book: SimBook, tape: Any, quiet: bool) -> None:
        self.topic = topic
        self.book = book
        self.tape = tape
        self.quiet = quiet
        self.model = DerivsModel(book)
        self.sent: deque[str] = deque(maxlen=SENT_KEPT)
        """The payloads published, in order, for tests to check against."""
        self._sinks: set[FrameSink] = set()
        self._last: tuple[str, str, str, str] | None = None

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def _payload(self, kind: str) -> str:
        bid, bid_qty, ask, ask_qty = self._last = self.model.best()
        latest = self.tape.history.latest(1)
        last = latest[0][ROW_PRICE] if latest else self.model.mark()
        mid = self.model.mark()
        payload = (
            '{"channel":"ticker","type":"%s","data":[{"symbol":"%s","bid":%s,"bid_qty":%s,"ask":%s,'  # noqa: UP031
            '"ask_qty":%s,"last":%s,"volume":%s,"vwap":%s,"low":%s,"high":%s,"change":0.0,"change_pct":0.00}]}'
            % (
                kind,
                self.book.symbol,
                bid,
                bid_qty,
                ask,
                ask_qty,
                last,
                self.model.volume_24h(),
                mid,
                bid,
                ask,
            )
        )
        self.sent.append(payload)
        return payload

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        self._sinks.add(sink)
        return WireFrame(ws_text_frame(self._payload("snapshot").encode()), self.topic)

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self.quiet or self.model.best() == self._last:
            return
        frames = [WireFrame(ws_text_frame(self._payload("update").encode()), self.topic)]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_idle(self, ts_ms: int) -> None:
        """Nothing between changes."""

    def crossing_outstanding(self) -> bool:
        return False


# -- the WebSocket session ---------------------------------------------------------------------------


class KrakenHost(Protocol):
    """What a session needs from its connection."""

    def send_control(self, payload: bytes) -> None: ...

    def push_frames(self, frames: list[WireFrame]) -> None: ...

    def subscribe_trades(
        self, exchange: str, category: str, symbol: str, channel: str, encoder: Callable[[], FrameEncoder]
    ) -> None: ...

    def subscribe_book(
        self,
        exchange: str,
        category: str,
        symbol: str,
        channel: str,
        combined: bool,
        factory: Callable[[SimBook], BookStream],
    ) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def note_ping(self) -> None: ...

    def note_subscribes(self, accepted: int, rejected: int) -> None: ...


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
