"""Bybit v5 subscribe protocol of one connection: requests, acks, pongs (PROTOCOLS.md §1.2, §1.4)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from marketflow.exchanges.base import Ack, ControlEvent, DataFrame, Pong, SubscribeRequest, UnknownControl
from marketflow.exchanges.bybit.streams import MARKET_NAMES
from marketflow.exchanges.venue_base import ResubscribingSession

# Spot refuses a whole subscribe request with more than 10 args; linear has no limit, but small requests
# keep a rejected topic from hiding its neighbours' acks.
MAX_ARGS_PER_REQUEST = 10
HEARTBEAT = b'{"req_id":"hb","op":"ping"}'


class _Control(msgspec.Struct):
    """Acks and pongs in every category's shape (§1.2, §1.4); absent fields stay None."""

    op: str | None = None
    success: bool | None = None
    ret_msg: str | None = None
    req_id: str | None = None
    conn_id: str | None = None
    topic: str | None = None


_control_decoder = msgspec.json.Decoder(_Control)


class Session(ResubscribingSession):
    """Protocol rules for one Bybit connection (one market, several symbols); a resubscribe is answered
    with a fresh snapshot."""

    sequence_check = None  # no per-connection message numbering

    def __init__(self, market: str, topics: Sequence[str]) -> None:
        if market not in MARKET_NAMES:
            raise ValueError(f"bybit has no market {market!r}")
        self.market = market
        self.topics = list(topics)
        self._next_req = 0

    def _requests(self, op: str, topics: Sequence[str]) -> list[SubscribeRequest]:
        requests = []
        for start in range(0, len(topics), MAX_ARGS_PER_REQUEST):
            chunk = tuple(topics[start : start + MAX_ARGS_PER_REQUEST])
            self._next_req += 1
            req_id = f"{op[:5]}-{self._next_req}"
            payload = msgspec.json.encode({"req_id": req_id, "op": op, "args": list(chunk)})
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
            return DataFrame()  # a data frame with its topic out of the usual place
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
