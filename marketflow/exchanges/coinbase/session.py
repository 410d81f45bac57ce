"""Coinbase subscribe protocol of one connection (PROTOCOLS.md §9): one channel per subscribe message,
acks, heartbeats, and the per-connection `sequence_num` rule (a jump makes a marker frame naming the
connection's `level2` products, which the decoder turns into one break per product; see `frames.py`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from marketflow.exchanges.base import Ack, ControlEvent, DataFrame, Pong, SubscribeRequest, UnknownControl
from marketflow.exchanges.coinbase.streams import (
    BOOK_CHANNEL,
    BOOK_PREFIX,
    HEARTBEATS_CHANNEL,
    TICKER_CHANNEL,
    TRADES_CHANNEL,
    check_market,
)

PRODUCTS_PER_REQUEST = 25
"""Products per subscribe message: 100 products x 2 channels stay within the feed's ack deadline at
`SEND_INTERVAL_S`. A message with an unknown product is refused whole; the feed then asks again for its
other products, so one bad product costs only itself."""
SEND_INTERVAL_S = 0.15
"""Unauthenticated messages are limited to 8/s per IP (§9.1); a little under it."""
SEQUENCE_GAP_CHANNEL = "marketflow_sequence_gap"
"""The channel of the marker frame the session makes when `sequence_num` jumped (never sent by Coinbase)."""


class _Control(msgspec.Struct):
    """Acks (`subscriptions`), heartbeats and errors; absent fields stay None."""

    channel: str | None = None
    type: str | None = None
    message: str | None = None
    reason: str | None = None


_control_decoder = msgspec.json.Decoder(_Control)
_NOT_A_PRODUCT = " is not a valid product"
_PRODUCT_CHANNELS = (BOOK_CHANNEL, TRADES_CHANNEL, TICKER_CHANNEL)


def _refused_product(reason: str | None) -> str | None:
    """`"DOGE-XYZ is not a valid product"` → `"DOGE-XYZ"`; None for an error about the whole message."""
    if reason is None or not reason.endswith(_NOT_A_PRODUCT):
        return None
    product = reason[: -len(_NOT_A_PRODUCT)]
    return product if product and " " not in product else None


_DATA_CHANNELS = frozenset({"market_trades", "l2_data", "ticker", "ticker_batch", "candles", "status"})
_SEQUENCE_KEY = b'"sequence_num":'


def _sequence_num(message: bytes) -> int | None:
    """The envelope's `sequence_num`, read without parsing the (possibly multi-MB) message."""
    at = message.find(_SEQUENCE_KEY)
    if at < 0:
        return None
    at += len(_SEQUENCE_KEY)
    end = at
    size = len(message)
    while end < size and message[end] == 0x20:
        end += 1
    start = end
    while end < size and 0x30 <= message[end] <= 0x39:
        end += 1
    return int(message[start:end]) if end > start else None


class Session:
    """Protocol rules for one Coinbase connection: subscribe messages, acks, and `sequence_num`."""

    def __init__(self, market: str, topics: Sequence[str]) -> None:
        check_market(market)
        self.market = market
        self.topics = list(topics)
        self._next_req = 0
        self._last_seq: int | None = None
        self.sequence_gaps = 0
        self.sequence_check: Callable[[bytes], bytes | None] | None = self._check_sequence

    @property
    def send_interval_s(self) -> float:
        return SEND_INTERVAL_S

    @property
    def max_lifetime_s(self) -> float | None:
        return None

    def _request(self, kind: str, channel: str, topics: Sequence[str]) -> SubscribeRequest:
        self._next_req += 1
        body: dict[str, object] = {"type": kind}
        if topics:
            body["product_ids"] = [t.partition(":")[2] for t in topics]
        body["channel"] = channel
        return SubscribeRequest(f"{kind[:5]}-{self._next_req}", tuple(topics), msgspec.json.encode(body))

    def _requests(self, kind: str, topics: Sequence[str]) -> list[SubscribeRequest]:
        """One channel per message (the venue refuses more), products in chunks."""
        requests = []
        for channel in (BOOK_CHANNEL, TRADES_CHANNEL, TICKER_CHANNEL):
            prefix = channel + ":"
            mine = [t for t in topics if t.startswith(prefix)]
            step = PRODUCTS_PER_REQUEST
            requests += [self._request(kind, channel, mine[i : i + step]) for i in range(0, len(mine), step)]
        return requests

    def subscribe_requests(self) -> list[SubscribeRequest]:
        # Heartbeats first: the first subscribe must arrive within 5 s, and without heartbeats a quiet
        # product's channels are closed after 60-90 s (§9.3).
        return [self._request("subscribe", HEARTBEATS_CHANNEL, ()), *self._requests("subscribe", self.topics)]

    def subscribe_topic_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("subscribe", topics)

    def unsubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("unsubscribe", topics)

    def resubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        """Unsubscribe then subscribe: a new `level2` subscription starts with a fresh snapshot."""
        return self._requests("unsubscribe", topics) + self._requests("subscribe", topics)

    def heartbeat(self) -> bytes | None:
        return None  # the `heartbeats` channel keeps the connection busy; the transport answers pings

    def is_data(self, message: bytes) -> bool:
        return message.startswith(
            (b'{"channel":"market_trades"', b'{"channel":"l2_data"', b'{"channel":"ticker"')
        )

    def control(self, message: bytes) -> ControlEvent:
        try:
            msg = _control_decoder.decode(message)
        except msgspec.DecodeError as exc:
            return UnknownControl(f"undecodable frame: {exc}")
        if msg.type == "error":
            reason = msg.message or "error"
            if msg.reason:
                reason += ": " + msg.reason
            product = _refused_product(msg.reason)
            if product is None:
                return Ack(None, False, reason)
            # The error names one product but answers the whole message (its other products get no
            # `subscriptions` ack): that product alone is refused, the feed asks again for the rest.
            refused = tuple(channel + ":" + product for channel in _PRODUCT_CHANNELS)
            return Ack(None, False, reason, refused, others_refused=True)
        channel = msg.channel
        if channel == "subscriptions":
            return Ack(None, True, "")
        if channel == HEARTBEATS_CHANNEL:
            return Pong()  # the venue's keep-alive, counted with pongs
        if channel in _DATA_CHANNELS:
            return DataFrame()
        return UnknownControl(f"unexpected frame channel={channel!r} type={msg.type!r}")

    def _check_sequence(self, message: bytes) -> bytes | None:
        seq = _sequence_num(message)
        if seq is None:
            return None
        last = self._last_seq
        self._last_seq = seq
        if last is None or seq <= last + 1:
            # The first message sets the count; a lower number is a new connection (replay).
            return None
        self.sequence_gaps += 1
        products = [t[len(BOOK_PREFIX) :] for t in self.topics if t.startswith(BOOK_PREFIX)]
        return msgspec.json.encode(
            {"channel": SEQUENCE_GAP_CHANNEL, "from": last, "to": seq, "product_ids": products}
        )
