"""Bybit v5 public WebSocket, as the simulator speaks it (PROTOCOLS.md §1).

Paths pick the category; JSON ops `subscribe` / `unsubscribe` / `ping` get acks and pongs shaped per
category (spot differs from linear / inverse). `publicTrade.<SYMBOL>` frames copy the live captures in key
order: linear `topic, type, ts, data` with `L`; spot `topic, ts, type, data` with sorted trade keys and no
`L`. `orderbook.<depth>.<SYMBOL>` is accepted and reported to the host, which has no book data yet.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec

from marketflow.sim.faults import MalformedKind
from marketflow.sim.market import ROW_ID, ROW_PRICE, ROW_SEQ, ROW_SIDE, ROW_SIZE, ROW_T, ROW_TICK, TradeRow

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


class BybitHost(Protocol):
    """What a session needs from its connection."""

    def send_control(self, payload: bytes) -> None:
        """Queue a text frame (ack, pong) after everything queued before it."""

    def send_control_later(self, payload: bytes, delay: float) -> None: ...

    def subscribe_trades(self, category: str, symbol: str, encoder: Callable[[], PayloadEncoder]) -> None: ...

    def unsubscribe_trades(self, category: str, symbol: str) -> None: ...

    def subscribe_book(self, category: str, symbol: str, depth: int) -> None:
        """Hook for order books (no book data yet)."""

    def unsubscribe_book(self, category: str, symbol: str, depth: int) -> None: ...

    def note_ping(self) -> None: ...

    def note_subscribes(self, accepted: int, rejected: int) -> None: ...


@attrs.frozen
class BybitRules:
    """What the venue lists and refuses, from the simulator's config."""

    symbols: frozenset[str]
    reject_topics: frozenset[str] = frozenset()
    slow_pong_s: float = 0.0


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
        known = (len(parts) == 2 and parts[0] == "publicTrade" and parts[1] in symbols) or (
            len(parts) == 3
            and parts[0] == "orderbook"
            and parts[1] in ORDERBOOK_DEPTHS
            and parts[2] in symbols
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
        accepted = 0
        for topic in args:
            problem = self._check_topic(topic)
            if problem is not None:
                errors.append(problem)
                continue
            self.topics.add(topic)
            accepted += 1
            self._attach(topic)
        self.host.note_subscribes(accepted, len(errors))
        if errors:
            self._error(";".join(errors), "subscribe", req_id)
        else:
            self.host.send_control(self._reply(True, "subscribe" if self.spot else "", "subscribe", req_id))

    def _unsubscribe(self, args: list[str], req_id: Any) -> None:
        for topic in args:
            if topic in self.topics:
                self.topics.discard(topic)
                self._detach(topic)
        self.host.send_control(self._reply(True, "unsubscribe" if self.spot else "", "unsubscribe", req_id))

    def _attach(self, topic: str) -> None:
        parts = topic.split(".")
        category = self.category
        if parts[0] == "publicTrade":
            symbol = parts[1]
            self.host.subscribe_trades(category, symbol, lambda: TradePayloadEncoder(category, symbol))
        else:
            self.host.subscribe_book(category, parts[2], int(parts[1]))

    def _detach(self, topic: str) -> None:
        parts = topic.split(".")
        if parts[0] == "publicTrade":
            self.host.unsubscribe_trades(self.category, parts[1])
        else:
            self.host.unsubscribe_book(self.category, parts[2], int(parts[1]))

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
        return malformed_payload(kind, self.category, symbol, ts_ms)


__all__ = [
    "CATEGORIES",
    "INVERSE",
    "LINEAR",
    "SPOT",
    "WS_PATHS",
    "BybitHost",
    "BybitRules",
    "BybitSession",
    "TradePayloadEncoder",
    "conn_id_for",
    "malformed_payload",
    "ws_path",
]
