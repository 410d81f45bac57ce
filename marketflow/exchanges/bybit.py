"""Bybit v5 public streams: spot and linear `publicTrade` (PROTOCOLS.md §1).

Frames are decoded straight into small Structs: first the envelope with `data` left raw, then `data` by the
topic's kind. Spot trade ids are numeric strings above 2^53 and stay strings; linear ids are UUIDs.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import (
    Ack,
    ControlEvent,
    DecodeCounters,
    Pong,
    SubscribeRequest,
    UnknownControl,
)
from marketflow.model import Trade

EXCHANGE = "bybit"
MARKETS: dict[str, bool] = {"spot": False, "linear": True}
DEFAULT_WS = {
    "spot": "wss://stream.bybit.com/v5/public/spot",
    "linear": "wss://stream.bybit.com/v5/public/linear",
}
DEFAULT_REST = "https://api.bybit.com"
# Spot refuses a whole subscribe request with more than 10 args; linear has no limit, but small requests
# keep a rejected topic from hiding its neighbours' acks.
MAX_ARGS_PER_REQUEST = 10
HEARTBEAT = b'{"req_id":"hb","op":"ping"}'
_TRADE_PREFIX = "publicTrade."

log = logging.getLogger("marketflow.exchanges.bybit")


def ws_url(market: str, override: str | None = None) -> str:
    """The stream URL of a market: the override as given (it is the full URL), else mainnet's."""
    if market not in MARKETS:
        raise ValueError(f"bybit has no market {market!r}; expected one of {sorted(MARKETS)}")
    return override or DEFAULT_WS[market]


def trade_topic(native: str) -> str:
    return _TRADE_PREFIX + native


class _Control(msgspec.Struct):
    """Acks and pongs in every category's shape (§1.2, §1.4); absent fields stay None."""

    op: str | None = None
    success: bool | None = None
    ret_msg: str | None = None
    req_id: str | None = None
    conn_id: str | None = None
    topic: str | None = None


class _Envelope(msgspec.Struct):
    topic: str
    data: msgspec.Raw
    ts: int = 0
    type: str = "snapshot"


class _Trade(msgspec.Struct):
    T: int
    s: str
    S: Literal["Buy", "Sell"]
    v: Decimal
    p: Decimal
    i: str


_control_decoder = msgspec.json.Decoder(_Control)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_trades_decoder = msgspec.json.Decoder(list[_Trade])
_SIDES: dict[str, Literal["buy", "sell"]] = {"Buy": "buy", "Sell": "sell"}


class Session:
    """Protocol rules for one Bybit connection (one market, several symbols)."""

    def __init__(self, market: str, natives: list[str], channels: tuple[str, ...]) -> None:
        if market not in MARKETS:
            raise ValueError(f"bybit has no market {market!r}")
        self.market = market
        self.topics: list[str] = []
        if "trades" in channels:
            self.topics.extend(trade_topic(n) for n in natives)
        self._next_req = 0

    def subscribe_requests(self) -> list[SubscribeRequest]:
        requests = []
        for start in range(0, len(self.topics), MAX_ARGS_PER_REQUEST):
            chunk = tuple(self.topics[start : start + MAX_ARGS_PER_REQUEST])
            self._next_req += 1
            req_id = f"sub-{self._next_req}"
            payload = msgspec.json.encode({"req_id": req_id, "op": "subscribe", "args": list(chunk)})
            requests.append(SubscribeRequest(req_id, chunk, payload))
        return requests

    def heartbeat(self) -> bytes:
        return HEARTBEAT

    def is_data(self, message: bytes) -> bool:
        # Every data frame carries a `topic`; acks and pongs never do. The prefix test is the fast path
        # for the frames Bybit actually sends; anything else is decided by the control decoder.
        return message.startswith(b'{"topic":')

    def control(self, message: bytes) -> ControlEvent:
        try:
            msg = _control_decoder.decode(message)
        except msgspec.DecodeError as exc:
            return UnknownControl(f"undecodable frame: {exc}")
        if msg.topic is not None:
            return UnknownControl("data frame with its topic out of the usual place")
        if msg.ret_msg == "pong" or msg.op == "pong":
            return Pong()
        if msg.op in ("subscribe", "unsubscribe") and msg.success is not None:
            reason = msg.ret_msg or ""
            return Ack(msg.req_id or None, msg.success, reason, _rejected_topics(reason))
        return UnknownControl(f"unexpected control frame op={msg.op!r} ret_msg={msg.ret_msg!r}")


def _rejected_topics(reason: str) -> tuple[str, ...]:
    """Topics named in a failure ack such as `error:handler not found,topic:publicTrade.X`."""
    found = []
    for part in reason.split(","):
        key, sep, value = part.partition(":")
        if sep and key.strip() == "topic" and value:
            found.append(value.strip())
    return tuple(found)


class FrameDecoder:
    """Bybit data frames → normalized trades for one feed (`symbols` maps native → normalized)."""

    def __init__(self, exchange: str, market: str, symbols: dict[str, str]) -> None:
        self.exchange = exchange
        self.market = market
        self.symbols = dict(symbols)
        self.counters = DecodeCounters()

    def decode(self, frames: list[bytes], recv_ts: int, out: list[Trade]) -> None:
        counters = self.counters
        symbols = self.symbols
        exchange = self.exchange
        sides = _SIDES
        for frame in frames:
            counters.frames += 1
            try:
                env = _envelope_decoder.decode(frame)
                topic = env.topic
                if not topic.startswith(_TRADE_PREFIX):
                    counters.ignored += 1
                    continue
                symbol = symbols.get(topic[len(_TRADE_PREFIX) :])
                if symbol is None:
                    counters.unknown_topics += 1
                    continue
                trades = _trades_decoder.decode(env.data)
            except msgspec.DecodeError as exc:
                counters.malformed += 1
                counters.last_error = str(exc)
                log.warning(
                    "malformed bybit frame ignored",
                    extra={"market": self.market, "error": str(exc), "frame": frame[:200]},
                )
                continue
            out.extend(
                Trade(exchange, symbol, t.i, t.p, t.v, sides[t.S], t.T * 1000, recv_ts) for t in trades
            )
            counters.trades += len(trades)
