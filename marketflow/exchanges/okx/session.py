"""OKX v5 public WebSocket: topics, subscribe requests and acks, keep-alive (PROTOCOLS.md §8.1-§8.2).

A topic is `<channel>:<instId>` (`trades:BTC-USDT`, `books:BTC-USDT-SWAP`), the pair OKX's `args` carry.
OKX answers every arg of a request with its own event (`subscribe`, or `error` with a code), so each
request carries one arg: every ack then settles exactly one request, and a refused instrument is named
by its own request (the others keep streaming). 480 requests per connection per hour is far above what a
feed sends (one per topic per connection, two per resync).

Keep-alive: OKX drops a connection that receives nothing for 30 s; the feed sends the text frame `ping`
(plain text, not JSON) every `ping_interval_s` (< 30 s) and OKX answers `pong`. A `notice` with code
64008 announces a service upgrade about 60 s ahead: the feed opens a replacement connection at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from marketflow.exchanges.base import (
    Ack,
    ControlEvent,
    DataFrame,
    Pong,
    Reconnect,
    SubscribeRequest,
    UnknownControl,
)
from marketflow.exchanges.okx.market_data import BY_INST_TYPE
from marketflow.exchanges.okx.symbols import MARKETS
from marketflow.exchanges.venue_base import ResubscribingSession

HEARTBEAT = b"ping"
PONG = b"pong"
NOTICE_UPGRADE = "64008"
TRADES_CHANNEL = "trades"
BOOK_CHANNELS: dict[int, str] = {400: "books", 5: "books5"}
"""`book_depth` → the channel: `books` (400 levels, then increments every 100 ms) or `books5` (5-level
snapshots)."""


def split_topic(topic: str) -> tuple[str, str]:
    """`books:BTC-USDT` → (`books`, `BTC-USDT`); ValueError if it is not a topic."""
    channel, sep, inst = topic.partition(":")
    if not sep or not channel or not inst:
        raise ValueError(f"not an okx topic (channel:instId): {topic!r}")
    return channel, inst


def _named_topic(text: str) -> tuple[str, ...]:
    """The topic an error names, as in `Wrong URL or channel:trades,instId:BTC-XYZ doesn't exist`."""
    channel = inst = ""
    for part in text.replace(" ", ",").split(","):
        key, sep, value = part.partition(":")
        if sep and key.endswith("channel"):
            channel = value
        elif sep and key == "instId":
            inst = value
    return (f"{channel}:{inst}",) if channel and inst else ()


class _Arg(msgspec.Struct):
    channel: str = ""
    instId: str = ""


class _Control(msgspec.Struct):
    event: str | None = None
    id: str | None = None
    arg: _Arg | None = None
    code: str | None = None
    msg: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")


_control_decoder = msgspec.json.Decoder(_Control)
_encode = msgspec.json.Encoder()


class Session(ResubscribingSession):
    """Protocol rules for one OKX connection (one market, several instruments); resubscribing an
    instrument is answered with a fresh `books` snapshot."""

    sequence_check = None  # no per-connection message numbering

    def __init__(self, market: str, topics: Sequence[str]) -> None:
        if market not in MARKETS:
            raise ValueError(f"okx has no market {market!r}; expected one of {sorted(MARKETS)}")
        self.market = market
        self.topics = list(topics)
        self._next_req = 0

    def _requests(self, op: str, topics: Sequence[str]) -> list[SubscribeRequest]:
        requests = []
        for topic in topics:
            channel, inst = split_topic(topic)
            self._next_req += 1
            req_id = f"{op[:5]}{self._next_req}"  # OKX: at most 32 letters and digits
            key = "instType" if channel in BY_INST_TYPE else "instId"
            payload = _encode.encode({"id": req_id, "op": op, "args": [{"channel": channel, key: inst}]})
            requests.append(SubscribeRequest(req_id, (topic,), payload))
        return requests

    def heartbeat(self) -> bytes:
        return HEARTBEAT

    def is_data(self, message: bytes) -> bool:
        # Pushes start with their `arg`; events (acks, errors, notices) start with `event` or `id`.
        return message.startswith(b'{"arg":')

    def control(self, message: bytes) -> ControlEvent:
        if message == PONG:
            return Pong()
        try:
            msg = _control_decoder.decode(message)
        except msgspec.DecodeError as exc:
            return UnknownControl(f"undecodable frame: {exc}")
        event = msg.event
        if event is None:
            if len(msg.data) and msg.arg is not None:
                return DataFrame()
            return UnknownControl("frame with neither event nor data")
        if event in ("subscribe", "unsubscribe"):
            return Ack(msg.id or None, True, event)
        if event == "error":
            reason = f"code {msg.code}: {msg.msg}"
            return Ack(msg.id or None, False, reason, _named_topic(msg.msg or ""))
        if event == "notice" and msg.code == NOTICE_UPGRADE:
            return Reconnect(f"okx notice {msg.code}: {msg.msg}")
        return UnknownControl(f"unexpected okx event {event!r} code={msg.code!r} msg={msg.msg!r}")
