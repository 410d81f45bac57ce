"""What every venue module exports (checked by tests/exchanges/test_venues.py).

A venue module (`bybit`, `binance`) exports the same names:

- `EXCHANGE: str` and `MARKETS: dict[str, bool]` (market name → is it a perpetual market)
- `ws_url(market, override) -> str`: the WebSocket URL (Bybit) or base URL (Binance) of a market
- `rest_url(market, override) -> str`: the REST base URL of a market
- `connections(market, natives, channels, book_depth, ws_override) -> list[ConnectionPlan]`: which
  connections a feed needs and which topics each carries (Binance shards streams and routes USD-M paths)
- `Session(market, topics)`: the per-connection protocol rules (subscribe requests, pacing, heartbeat,
  telling data frames from control frames, reading acks and pongs)
- `FrameDecoder(exchange, market, symbols)`: raw data frames → normalized trades and book updates
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from marketflow.model import BookUpdate, Trade


@attrs.frozen
class ConnectionPlan:
    """One connection of a feed: `suffix` tells it apart in names (`""`, `/public`, `#2`)."""

    suffix: str
    url: str
    topics: tuple[str, ...]
    channels: frozenset[str]
    natives: tuple[str, ...]


@attrs.frozen
class SubscribeRequest:
    """One subscribe message and the topics it asks for."""

    req_id: str
    topics: tuple[str, ...]
    payload: bytes


@attrs.frozen
class Ack:
    """The venue answered a subscribe request: `rejected` lists the refused topics when it names them."""

    req_id: str | None
    success: bool
    reason: str
    rejected: tuple[str, ...] = ()


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class Reconnect:
    """The venue announced the connection will end (Binance `serverShutdown`): replace it now."""

    reason: str


@attrs.frozen
class UnknownControl:
    """A non-data frame we do not understand; counted and logged, never fatal."""

    reason: str


ControlEvent = Ack | Pong | Reconnect | UnknownControl


class Session(Protocol):
    """Per-connection protocol rules of one venue market."""

    topics: list[str]

    @property
    def send_interval_s(self) -> float:
        """Least time between two messages we send (the venue's inbound rate limit)."""
        ...

    @property
    def max_lifetime_s(self) -> float | None:
        """The venue closes connections at this age; the feed replaces them a little before."""
        ...

    def subscribe_requests(self) -> list[SubscribeRequest]: ...

    def unsubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]: ...

    def resubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]: ...

    def heartbeat(self) -> bytes | None: ...

    def is_data(self, message: bytes) -> bool: ...

    def control(self, message: bytes) -> ControlEvent: ...


@attrs.frozen
class TradeGap:
    """Trade ids jumped: ids in `[first_missing, next_seen)` never arrived (Binance aggregate ids)."""

    exchange: str
    market: str
    symbol: str
    native: str
    first_missing: int
    next_seen: int
    since_ts: int
    until_ts: int


class DecodeCounters:
    """Plain counters a FrameDecoder keeps; read by the normalizer's statistics()."""

    __slots__ = (
        "frames",
        "trades",
        "book_updates",
        "duplicates",
        "malformed",
        "unknown_topics",
        "ignored",
        "last_error",
    )

    def __init__(self) -> None:
        self.frames = 0
        self.trades = 0
        self.book_updates = 0
        self.duplicates = 0
        self.malformed = 0
        self.unknown_topics = 0
        self.ignored = 0
        self.last_error: str | None = None


@attrs.define
class Decoded:
    """What one wake-up of the normalizer decoded, across feeds."""

    trades: list[Trade] = attrs.Factory(list)
    books: list[BookUpdate] = attrs.Factory(list)
    trade_gaps: list[TradeGap] = attrs.Factory(list)

    def clear(self) -> None:
        self.trades = []
        self.books = []
        self.trade_gaps = []


class FrameDecoder(Protocol):
    counters: DecodeCounters

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None: ...
