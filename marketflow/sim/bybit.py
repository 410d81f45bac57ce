"""Bybit v5 public WebSocket, as the simulator speaks it (PROTOCOLS.md §1).

Paths pick the category; JSON ops `subscribe` / `unsubscribe` / `ping` get acks and pongs shaped per
category (spot differs from linear / inverse). `publicTrade.<SYMBOL>` frames copy the live captures in key
order: linear `topic, type, ts, data` with `L`; spot `topic, ts, type, data` with sorted trade keys and no
`L`. `orderbook.<depth>.<SYMBOL>` (PROTOCOLS §1.6) is a `BybitBookStream` on the simulator's book: a snapshot
of the top `depth` levels on subscribe, then a delta per book update that changed the top `depth`, with
`u` = previous + 1. Depth 1 is snapshot-only, re-sent on change and every 3 s unchanged with the same `u`.
Key order copies the captures: spot and every depth-1 frame put `ts` before `type`; linear / inverse put
`type` first and carry `cts` (spot captures have no `cts`, so spot frames leave it out).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec
import trio

from marketflow.sim.book import BookTick, Crossing, SimBook
from marketflow.sim.derivs import BybitLiquidationStream, BybitTickerStream
from marketflow.sim.faults import MalformedKind
from marketflow.sim.host import StreamHost
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import (
    ROW_ID,
    ROW_PRICE,
    ROW_SEQ,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    ROW_TICK,
    Formats,
    FrameEncoder,
    FrameSink,
    TradeRow,
    WireFrame,
    stable_crc,
)

SPOT = "spot"
LINEAR = "linear"
INVERSE = "inverse"
WS_PATHS: dict[str, str] = {
    "/v5/public/spot": SPOT,
    "/v5/public/linear": LINEAR,
    "/v5/public/inverse": INVERSE,  # same shapes as linear
}
CATEGORIES: tuple[str, ...] = (SPOT, LINEAR, INVERSE)
ORDERBOOK_DEPTHS: frozenset[str] = frozenset({"1", "50", "200", "1000"})
SPOT_MAX_ARGS = 10
EXCHANGE = "bybit"
U_BASE = 100_000_000
LEVEL1_RESEND_S = 3.0  # an unchanged orderbook.1 is pushed again after this long

PayloadEncoder = Callable[[list[TradeRow], int], bytes]


def ws_path(category: str) -> str:
    return "/v5/public/" + category


def conn_id_for(seed: int, number: int) -> str:
    """A deterministic `conn_id` for the `number`-th connection of a run."""
    rng = random.Random(seed * 1_000_003 + number * 7919 + 0xB1B17)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class TradePayloadEncoder:
    """Encodes a list of trades as one `publicTrade` payload for a (category, symbol)."""

    def __init__(self, category: str, symbol: str) -> None:
        self.category = category
        self.symbol = symbol
        topic = "publicTrade." + symbol
        # Symbols are validated upper-case alphanumerics, so they need no JSON escaping and no %-escaping.
        if category == SPOT:
            self._head = '{"topic":"' + topic + '","ts":%d,"type":"snapshot","data":['
            self._trade = (
                '{"BT":false,"RPI":false,"S":"%s","T":%d,"i":"%s","p":"%s","s":"'
                + symbol
                + '","seq":%d,"v":"%s"}'
            )
        else:
            self._head = '{"topic":"' + topic + '","type":"snapshot","ts":%d,"data":['
            self._trade = (
                '{"T":%d,"s":"'
                + symbol
                + '","S":"%s","v":"%s","p":"%s","L":"%s","i":"%s","BT":false,"RPI":false,"seq":%d}'
            )

    def __call__(self, rows: list[TradeRow], ts_ms: int) -> bytes:
        trade = self._trade
        if self.category == SPOT:
            body = ",".join(
                [
                    trade % (r[ROW_SIDE], r[ROW_T], r[ROW_ID], r[ROW_PRICE], r[ROW_SEQ], r[ROW_SIZE])
                    for r in rows
                ]
            )
        else:
            body = ",".join(
                [
                    trade
                    % (r[ROW_T], r[ROW_SIDE], r[ROW_SIZE], r[ROW_PRICE], r[ROW_TICK], r[ROW_ID], r[ROW_SEQ])
                    for r in rows
                ]
            )
        return ((self._head % ts_ms) + body + "]}").encode()


def framed(encode: Callable[[list[TradeRow], int], bytes]) -> FrameEncoder:
    """A payload encoder turned into a wire encoder (one text frame per call)."""
    return lambda rows, ts: ws_text_frame(encode(rows, ts))


def malformed_payload(kind: MalformedKind, category: str, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
    """A broken frame of `kind` for `symbol`'s trade topic: (payload, is_binary)."""
    if kind is MalformedKind.NOT_JSON:
        return b"simulated garbage <not json> " + symbol.encode(), False
    if kind is MalformedKind.BINARY:
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffsimulated binary frame", True
    if kind is MalformedKind.UNKNOWN_TOPIC:
        frame = {"topic": "simUnknown." + symbol, "type": "snapshot", "ts": ts_ms, "data": [{"s": symbol}]}
        return msgspec.json.encode(frame), False
    trade: dict[str, Any]
    if category == SPOT:
        trade = {"BT": False, "RPI": False, "S": "Buy", "T": ts_ms, "i": "0", "p": "1.0", "s": symbol}
        trade |= {"seq": 0, "v": "1.0"}
    else:
        trade = {"T": ts_ms, "s": symbol, "S": "Buy", "v": "1.0", "p": "1.0", "L": "PlusTick"}
        trade |= {"i": "00000000-0000-0000-0000-000000000000", "BT": False, "RPI": False, "seq": 0}
    if kind is MalformedKind.BAD_PRICE:
        trade["p"] = "abc"
    elif kind is MalformedKind.MISSING_SIDE:
        del trade["S"]
    topic = "publicTrade." + symbol
    if category == SPOT:
        frame = {"topic": topic, "ts": ts_ms, "type": "snapshot", "data": [trade]}
    else:
        frame = {"topic": topic, "type": "snapshot", "ts": ts_ms, "data": [trade]}
    payload = msgspec.json.encode(frame)
    if kind is MalformedKind.TRUNCATED_JSON:
        payload = payload[: len(payload) // 2]
    return payload, False


class BybitHost(StreamHost, Protocol):
    """What a Bybit session needs from its connection, beyond `StreamHost`."""

    def send_control_later(self, payload: bytes, delay: float) -> None: ...

    def note_ping(self) -> None: ...


@attrs.frozen
class BybitRules:
    """What the venue lists and refuses, from the simulator's config."""

    symbols: frozenset[str]
    reject_topics: frozenset[str] = frozenset()
    slow_pong_s: float = 0.0
    out_of_order_every: int | None = None


_decode_request = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class BybitSession:
    """One client connection's Bybit conversation: parses ops, answers, (un)subscribes via the host."""

    def __init__(self, category: str, conn_id: str, host: BybitHost, rules: BybitRules) -> None:
        self.category = category
        self.conn_id = conn_id
        self.host = host
        self.rules = rules
        self.spot = category == SPOT
        self.topics: set[str] = set()

    # -- replies -------------------------------------------------------------------------------------

    def _reply(self, success: bool, ret_msg: str, op: str, req_id: Any) -> bytes:
        reply: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": self.conn_id}
        if req_id is not None:
            reply["req_id"] = req_id
        elif not self.spot:
            reply["req_id"] = ""  # linear always carries req_id
        reply["op"] = op
        return _encode.encode(reply)

    def _error(self, ret_msg: str, op: str, req_id: Any) -> None:
        self.host.send_control(self._reply(False, ret_msg, op, req_id))

    # -- incoming ------------------------------------------------------------------------------------

    def on_message(self, data: bytes | str) -> None:
        """Handle one complete client message (text or binary)."""
        try:
            msg = _decode_request.decode(data)
        except msgspec.DecodeError:
            self._error("error:invalid json", "", None)
            return
        if not isinstance(msg, dict):
            self._error("error:request must be a JSON object", "", None)
            return
        op = msg.get("op")
        req_id = msg.get("req_id")
        if op == "ping":
            self._pong(req_id)
        elif op == "subscribe" or op == "unsubscribe":
            args = msg.get("args")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                self._error("error:args must be a list of topic strings", op, req_id)
            elif op == "subscribe":
                self._subscribe(args, req_id)
            else:
                self._unsubscribe(args, req_id)
        else:
            self._error("error:unsupported op,op:" + str(op), op if isinstance(op, str) else "", req_id)

    def _pong(self, req_id: Any) -> None:
        self.host.note_ping()
        pong = self._reply(True, "pong", "ping", req_id)
        if self.rules.slow_pong_s > 0:
            self.host.send_control_later(pong, self.rules.slow_pong_s)
        else:
            self.host.send_control(pong)

    def _check_topic(self, topic: str) -> str | None:
        """None if `topic` can be subscribed, else the failure message."""
        if topic in self.topics:
            return "error:already subscribed,topic:" + topic
        parts = topic.split(".")
        symbols = self.rules.symbols
        two = len(parts) == 2 and parts[1] in symbols
        market_data = two and (parts[0] == "tickers" or (parts[0] == "allLiquidation" and not self.spot))
        known = (
            market_data
            or (len(parts) == 2 and parts[0] == "publicTrade" and parts[1] in symbols)
            or (
                len(parts) == 3
                and parts[0] == "orderbook"
                and parts[1] in ORDERBOOK_DEPTHS
                and parts[2] in symbols
            )
        )
        if not known or topic in self.rules.reject_topics:
            return "error:handler not found,topic:" + topic
        return None

    def _subscribe(self, args: list[str], req_id: Any) -> None:
        if self.spot and len(args) > SPOT_MAX_ARGS:
            self.host.note_subscribes(0, len(args))
            self._error("args size >10", "subscribe", req_id)  # the whole request is refused
            return
        errors: list[str] = []
        accepted: list[str] = []
        for topic in args:
            problem = self._check_topic(topic)
            if problem is not None:
                errors.append(problem)
                continue
            self.topics.add(topic)
            accepted.append(topic)
        self.host.note_subscribes(len(accepted), len(errors))
        if errors:
            self._error(";".join(errors), "subscribe", req_id)
        else:
            self.host.send_control(self._reply(True, "subscribe" if self.spot else "", "subscribe", req_id))
        for topic in accepted:  # after the ack, so a book snapshot follows it
            self._attach(topic)

    def _unsubscribe(self, args: list[str], req_id: Any) -> None:
        for topic in args:
            if topic in self.topics:
                self.topics.discard(topic)
                self.host.unsubscribe(topic)
        self.host.send_control(self._reply(True, "unsubscribe" if self.spot else "", "unsubscribe", req_id))

    def _attach(self, topic: str) -> None:
        parts = topic.split(".")
        category = self.category
        if parts[0] == "publicTrade":
            symbol = parts[1]
            self.host.subscribe_trades(
                EXCHANGE, category, symbol, topic, lambda: framed(TradePayloadEncoder(category, symbol))
            )
        elif parts[0] == "tickers":
            every = self.rules.out_of_order_every
            self.host.subscribe_book(
                EXCHANGE,
                category,
                parts[1],
                topic,
                False,
                lambda book: BybitTickerStream(category, book, every),
            )
        elif parts[0] == "allLiquidation":
            self.host.subscribe_book(EXCHANGE, category, parts[1], topic, False, BybitLiquidationStream)
        else:
            depth = int(parts[1])
            self.host.subscribe_book(
                EXCHANGE,
                category,
                parts[2],
                topic,
                False,
                lambda book: BybitBookStream(category, depth, book),
            )

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
        return malformed_payload(kind, self.category, symbol, ts_ms)

    def on_control(self, ping: bool, payload: bytes) -> None:
        """Protocol pings are answered by the protocol; Bybit counts nothing."""

    async def run(self) -> None:
        """Bybit has no per-connection timers beyond the server's idle watchdog."""


def _levels(formats: Formats, levels: list[tuple[int, int]]) -> str:
    prices = formats.prices
    sizes = formats.sizes
    price = formats.price
    size = formats.size
    return ",".join(
        [
            '["' + (prices.get(p) or price(p)) + '","' + ((sizes.get(q) or size(q)) if q else "0") + '"]'
            for p, q in levels
        ]
    )


def _changes(old: dict[int, int], new: dict[int, int]) -> dict[int, int]:
    """What turns a published top-N `old` into `new`: changed or new levels, and deletes (size 0)."""
    out = dict(new.items() - old.items())
    for price in old.keys() - new.keys():
        out[price] = 0
    return out


class BybitBookStream:
    """`orderbook.<depth>.<SYMBOL>` on one book: the top `depth` levels as a snapshot, then deltas.

    The stream keeps the top N it has published, so its deltas always turn a subscriber's book into the
    true top N: a level pushed out of the top N is deleted, one that moves in is sent. A subscriber that
    joins gets a snapshot of the published state and the current `u`.
    """

    def __init__(self, category: str, depth: int, book: SimBook) -> None:
        self.category = category
        self.depth = depth
        self.book = book
        self.formats = Formats(book.instrument)
        symbol = book.symbol
        self.topic = topic = "orderbook.%d.%s" % (depth, symbol)  # noqa: UP031
        self.u = U_BASE + stable_crc(topic + category) % 100_000_000  # u = 1 would mean "restarted"
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.skipped = 0
        self._skip = 0
        self._crossing = Crossing()
        self._cross_size = max(1, int(book.instrument.mean_size_steps))
        self._sinks: set[FrameSink] = set()
        self._last_sent = 0.0
        ts_first = category == SPOT or depth == 1
        head = '{"topic":"' + topic + ('","ts":%d,"type":"%s"' if ts_first else '","type":"%s","ts":%d')
        self._ts_first = ts_first
        self._head = head + ',"data":{"s":"' + symbol + '","b":['

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: publish the book as it is now
            self.bids, self.asks = self.book.top_maps(self.depth)
            self.u += 1
        self._sinks.add(sink)
        return self._frame("snapshot", self.bids, self.asks, self._now_ms())

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000

    def _frame(self, kind: str, bids: dict[int, int], asks: dict[int, int], ts: int) -> WireFrame:
        head = self._head % ((ts, kind) if self._ts_first else (kind, ts))
        body = (
            head
            + _levels(self.formats, sorted(bids.items(), reverse=True))
            + '],"a":['
            + _levels(self.formats, sorted(asks.items()))
            + '],"u":%d,"seq":%d' % (self.u, self.book.last_id)  # noqa: UP031
        )
        tail = "}}" if self.category == SPOT else '},"cts":%d}' % (ts - 1)  # noqa: UP031
        self._last_sent = trio.current_time()
        return WireFrame(ws_text_frame((body + tail).encode()), self.topic)

    def _publish(self, frame: WireFrame) -> None:
        frames = [frame]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if tick.skip:
            self._skip += 1
        crossing = self._crossing
        crossing.pending = crossing.pending or tick.cross
        bids, asks = self.book.top_maps(self.depth)
        if tick.restart:  # the service restarted: a snapshot with u = 1, deltas go on from 2
            self.u = 1
            self.bids, self.asks = bids, asks
            crossing.price = None  # the subscribers' books are replaced
            self._publish(self._frame("snapshot", bids, asks, ts_ms))
            return
        if self.depth == 1:
            if bids == self.bids and asks == self.asks and not crossing.outstanding:
                self.on_idle(ts_ms)
                return
            self.u += 1
            self.bids, self.asks = bids, asks
            if self._take_skip():
                return
            shown = bids
            if crossing.outstanding:  # level 1 of the crossed book is the crossing bid alone
                changes: dict[int, int] = {}
                crossing.apply(bids, min(asks), self._cross_size, changes)
                if crossing.price is not None:
                    shown = {crossing.price: changes[crossing.price]}
            self._publish(self._frame("snapshot", shown, asks, ts_ms))
            return
        bid_changes = _changes(self.bids, bids)
        ask_changes = _changes(self.asks, asks)
        if not bid_changes and not ask_changes and not crossing.outstanding:
            return
        self.u += 1
        self.bids, self.asks = bids, asks
        if self._take_skip():
            return
        if crossing.outstanding:
            crossing.apply(bids, min(asks), self._cross_size, bid_changes)
        self._publish(self._frame("delta", bid_changes, ask_changes, ts_ms))

    def on_idle(self, ts_ms: int) -> None:
        """Level 1 is pushed again, same `u`, when it has not changed for 3 s."""
        if self.depth == 1 and trio.current_time() - self._last_sent >= LEVEL1_RESEND_S:
            self._publish(self._frame("snapshot", self.bids, self.asks, ts_ms))

    def crossing_outstanding(self) -> bool:
        return self._crossing.outstanding

    def _take_skip(self) -> bool:
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            self._last_sent = trio.current_time()
            return True
        return False


__all__ = [
    "CATEGORIES",
    "INVERSE",
    "LINEAR",
    "SPOT",
    "WS_PATHS",
    "BybitBookStream",
    "BybitHost",
    "BybitRules",
    "BybitSession",
    "TradePayloadEncoder",
    "conn_id_for",
    "framed",
    "malformed_payload",
    "ws_path",
]
