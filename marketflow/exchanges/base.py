"""What every venue module exports (checked by tests/exchanges/test_venues.py).

A venue module (`bybit`, later `binance`) exports the same names:

- `EXCHANGE: str` and `MARKETS: dict[str, bool]` (market name → is it a perpetual market)
- `ws_url(market, override) -> str`: the stream URL for a market
- `Session(market, natives, channels)`: the per-connection protocol rules (topics, subscribe requests,
  heartbeat, telling data frames from control frames, reading acks and pongs)
- `FrameDecoder(exchange, market, symbols)`: turns raw data frames into normalized `model.Trade` lists
"""

from __future__ import annotations

from typing import Protocol

import attrs

from marketflow.model import Trade


@attrs.frozen
class SubscribeRequest:
    """One subscribe message and the topics it asks for."""

    req_id: str
    topics: tuple[str, ...]
    payload: bytes


@attrs.frozen
class Ack:
    """The venue answered a subscribe request: `rejected` maps each refused topic to the venue's reason."""

    req_id: str | None
    success: bool
    reason: str
    rejected: tuple[str, ...] = ()


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class UnknownControl:
    """A non-data frame we do not understand; counted and logged, never fatal."""

    reason: str


ControlEvent = Ack | Pong | UnknownControl


class Session(Protocol):
    """Per-connection protocol rules of one venue market."""

    def subscribe_requests(self) -> list[SubscribeRequest]: ...

    def heartbeat(self) -> bytes | None: ...

    def is_data(self, message: bytes) -> bool: ...

    def control(self, message: bytes) -> ControlEvent: ...


class DecodeCounters:
    """Plain counters a FrameDecoder keeps; read by the normalizer's statistics()."""

    __slots__ = ("frames", "trades", "malformed", "unknown_topics", "ignored", "last_error")

    def __init__(self) -> None:
        self.frames = 0
        self.trades = 0
        self.malformed = 0
        self.unknown_topics = 0
        self.ignored = 0
        self.last_error: str | None = None


class FrameDecoder(Protocol):
    counters: DecodeCounters

    def decode(self, frames: list[bytes], recv_ts: int, out: list[Trade]) -> None: ...
