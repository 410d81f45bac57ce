"""What every venue session of the simulator needs from its WebSocket connection.

Each venue's host protocol (`BybitHost`, `OkxHost`, `KrakenHost`, `CoinbaseHost`) adds what only its session
uses (pushed frames, delayed acks, pings, closing) to this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from marketflow.sim.book import BookStream, SimBook
from marketflow.sim.market import FrameEncoder

__all__ = ["StreamHost"]


class StreamHost(Protocol):
    """Control frames, trade and book subscriptions on one connection."""

    def send_control(self, payload: bytes) -> None:
        """Queue a text frame (ack, pong) after everything queued before it."""

    def subscribe_trades(
        self, exchange: str, category: str, symbol: str, channel: str, encoder: Callable[[], FrameEncoder]
    ) -> None:
        """Receive the tape's frames on `channel` (a name unique on this connection), encoded by `encoder`."""

    def subscribe_book(
        self,
        exchange: str,
        category: str,
        symbol: str,
        channel: str,
        combined: bool,
        factory: Callable[[SimBook], BookStream],
    ) -> None:
        """Receive the book stream named `channel` (created by `factory` if new)."""

    def unsubscribe(self, channel: str) -> None: ...

    def note_subscribes(self, accepted: int, rejected: int) -> None: ...
