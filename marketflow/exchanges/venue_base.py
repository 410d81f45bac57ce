"""Plumbing the venue packages share behind the `Venue` contract (`base.py`).

A venue class subclasses `VenueBase` (or `CompactSymbolVenue`, for `BTCUSDT`-style symbols) and sets its
`_exchange`, `_markets` and `_recovery`; it gets the `name` and `markets` properties, the market lookup
whose error names the known markets, the one trade-recovery policy of all its markets and an empty
instrument list (venues with linear contracts only). Everything venue-specific stays in the venue's own
class, and its module-level `VENUE: Venue` annotation keeps mypy checking the whole contract.

`ResubscribedBooks` adds the book recovery of venues that resync a book by resubscribing (Bybit, OKX).
`ResubscribingSession` is the part of a `Session` shared by venues that subscribe with `subscribe` /
`unsubscribe` ops, send at will, keep a connection as long as it lives, and resync a book by
resubscribing (Bybit, OKX); `count_malformed` is what every decoder does with a frame it cannot read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar

from marketflow.exchanges.base import (
    BookRecovery,
    DecodeCounters,
    Fetch,
    Instrument,
    Market,
    RestRequest,
    SubscribeRequest,
    TradeRecovery,
)
from marketflow.exchanges.symbols import compact_native, normalize_compact
from marketflow.model import BookUpdate

__all__ = ["CompactSymbolVenue", "ResubscribedBooks", "ResubscribingSession", "VenueBase", "count_malformed"]


class VenueBase:
    """The shared part of a venue: its name, its markets and how a market name is checked."""

    _exchange: ClassVar[str]
    _markets: ClassVar[Mapping[str, Market]]
    _recovery: ClassVar[TradeRecovery]

    @property
    def name(self) -> str:
        return self._exchange

    @property
    def markets(self) -> Mapping[str, Market]:
        return self._markets

    def _market(self, market: str) -> Market:
        try:
            return self._markets[market]
        except KeyError:
            raise ValueError(
                f"{self._exchange} has no market {market!r}; expected one of {sorted(self._markets)}"
            ) from None

    def trade_recovery(self, market: str) -> TradeRecovery:
        self._market(market)
        return self._recovery

    async def instruments(self, market: str, natives: Sequence[str], fetch: Fetch) -> list[Instrument]:
        return []


class CompactSymbolVenue(VenueBase):
    """A venue whose native symbols are the compact `BTCUSDT` form (`symbols.py`)."""

    def normalize_symbol(self, market: str, symbol: str) -> str:
        return normalize_compact(symbol, perpetual=self._market(market).perpetual)

    def native_symbol(self, market: str, symbol: str) -> str:
        self._market(market)
        return compact_native(symbol)


class ResubscribedBooks:
    """A venue whose books are re-snapshotted by resubscribing (`BookRecovery.RESUBSCRIBE`): it has no
    REST snapshot; `_resubscribed` says what is resubscribed, for the error of asking one anyway."""

    _exchange: ClassVar[str]
    _resubscribed: ClassVar[str] = "resubscribing"

    def book_recovery(self, market: str) -> BookRecovery:
        return BookRecovery.RESUBSCRIBE

    def snapshot_request(self, market: str, native: str) -> RestRequest:
        raise NotImplementedError(f"{self._exchange} books are re-snapshotted by {self._resubscribed}")

    def parse_snapshot(self, market: str, body: bytes, symbol: str, recv_ts: int) -> BookUpdate:
        raise NotImplementedError(f"{self._exchange} books are re-snapshotted by {self._resubscribed}")


class ResubscribingSession:
    """Subscribe, unsubscribe and resubscribe (unsubscribe then subscribe again: the venue answers a new
    subscription with a fresh book snapshot) through the subclass's `_requests(op, topics)`; no send
    pacing and no lifetime limit."""

    topics: list[str]

    @property
    def send_interval_s(self) -> float:
        return 0.0

    @property
    def max_lifetime_s(self) -> float | None:
        return None

    def _requests(self, op: str, topics: Sequence[str]) -> list[SubscribeRequest]:
        raise NotImplementedError

    def subscribe_requests(self) -> list[SubscribeRequest]:
        return self._requests("subscribe", self.topics)

    def subscribe_topic_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("subscribe", topics)

    def unsubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("unsubscribe", topics)

    def resubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        return self._requests("unsubscribe", topics) + self._requests("subscribe", topics)


def count_malformed(
    log: logging.Logger, counters: DecodeCounters, exchange: str, market: str, exc: Exception, frame: bytes
) -> None:
    """A frame that did not decode: counted, kept as the last error, logged on the venue's logger."""
    counters.malformed += 1
    counters.last_error = str(exc)
    log.warning(
        f"malformed {exchange} frame ignored",
        extra={"market": market, "error": str(exc), "frame": frame[:200]},
    )
