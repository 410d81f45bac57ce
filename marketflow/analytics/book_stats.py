"""Order-book statistics (SPEC §8) from a book top: lists of (price, amount), best first.

- ``spread = best ask − best bid`` and ``mid = (best bid + best ask) / 2``: exact;
- ``microprice = (bid · ask_qty + ask · bid_qty) / (bid_qty + ask_qty)`` at the touch;
- ``depth imbalance = (Σ bid_qty − Σ ask_qty) / (Σ bid_qty + Σ ask_qty)`` over the top ``depth`` levels of
  each side, in [-1, 1], positive when bids are heavier;
- divergence (Binance vs Bybit, same normalized symbol) in basis points of the mean of the two mids:
  ``(binance_mid − bybit_mid) · 20000 / (binance_mid + bybit_mid)``, only when both mids were updated
  within 100 ms of each other (``|ts_a − ts_b| ≤ 100 ms``), else None.

Divisions go through :func:`~.decimal_fmt.ratio` (28 significant digits, half-even); a value that needs a
missing side or divides by zero is None (JSON null).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

import attrs

from marketflow.analytics.decimal_fmt import ZERO, dec_or_none, exact, ratio
from marketflow.model import Level

__all__ = [
    "DIVERGENCE_WINDOW_US",
    "BookStats",
    "book_stats",
    "book_stats_json",
    "depth_imbalance",
    "microprice",
    "mid",
    "mid_divergence_bps",
    "spread",
]

DIVERGENCE_WINDOW_US: Final = 100_000
_TWO = Decimal(2)
_BPS2 = Decimal(20000)


def spread(bids: Sequence[Level], asks: Sequence[Level]) -> Decimal | None:
    """Best ask − best bid, or None if a side is empty."""
    if not bids or not asks:
        return None
    with exact():
        return asks[0][0] - bids[0][0]


def mid(bids: Sequence[Level], asks: Sequence[Level]) -> Decimal | None:
    """(best bid + best ask) / 2, exact, or None if a side is empty."""
    if not bids or not asks:
        return None
    with exact():
        return (bids[0][0] + asks[0][0]) / _TWO


def microprice(bids: Sequence[Level], asks: Sequence[Level]) -> Decimal | None:
    """Touch prices weighted by the opposite side's quantity; None if a side is empty or both are 0."""
    if not bids or not asks:
        return None
    (bid, bid_qty), (ask, ask_qty) = bids[0], asks[0]
    with exact():
        return ratio(bid * ask_qty + ask * bid_qty, bid_qty + ask_qty)


def depth_imbalance(bids: Sequence[Level], asks: Sequence[Level], depth: int) -> Decimal | None:
    """(Σ bid qty − Σ ask qty) / (Σ bid qty + Σ ask qty) over ``depth`` levels; None for an empty top."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    with exact():
        bid_qty = sum((qty for _, qty in bids[:depth]), ZERO)
        ask_qty = sum((qty for _, qty in asks[:depth]), ZERO)
        return ratio(bid_qty - ask_qty, bid_qty + ask_qty)


def mid_divergence_bps(
    a: tuple[Decimal, int] | None,
    b: tuple[Decimal, int] | None,
    *,
    window_us: int = DIVERGENCE_WINDOW_US,
) -> Decimal | None:
    """Mid `a` vs mid `b` (e.g. Binance vs Bybit) in bps of their mean, from ``(mid, ts_us)`` pairs; None if
    not comparable."""
    if a is None or b is None:
        return None
    (mid_a, ts_a), (mid_b, ts_b) = a, b
    if abs(ts_a - ts_b) > window_us:
        return None
    with exact():
        return ratio((mid_a - mid_b) * _BPS2, mid_a + mid_b)


@attrs.frozen
class BookStats:
    spread: Decimal | None
    mid: Decimal | None
    microprice: Decimal | None
    depth_imbalance: Decimal | None
    depth: int


def book_stats(bids: Sequence[Level], asks: Sequence[Level], depth: int = 10) -> BookStats:
    """Every statistic of one book top."""
    return BookStats(
        spread=spread(bids, asks),
        mid=mid(bids, asks),
        microprice=microprice(bids, asks),
        depth_imbalance=depth_imbalance(bids, asks, depth),
        depth=depth,
    )


def book_stats_json(stats: BookStats) -> dict[str, Any]:
    """Decimal strings (null when undefined)."""
    return {
        "spread": dec_or_none(stats.spread),
        "mid": dec_or_none(stats.mid),
        "microprice": dec_or_none(stats.microprice),
        "depth_imbalance": dec_or_none(stats.depth_imbalance),
        "depth": stats.depth,
    }
