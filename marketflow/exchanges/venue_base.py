"""Plumbing the venue packages share behind the `Venue` contract (`base.py`).

A venue class subclasses `VenueBase` and sets its `_exchange`, `_markets` and `_recovery`; it gets the
`name` and `markets` properties, the market lookup whose error names the known markets, the one
trade-recovery policy of all its markets and an empty instrument list (venues with linear contracts
only). Everything venue-specific stays in the venue's own class, and its module-level `VENUE: Venue`
annotation keeps mypy checking the whole contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from marketflow.exchanges.base import Fetch, Instrument, Market, TradeRecovery

__all__ = ["VenueBase"]


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
