"""Exact decimal arithmetic and formatting shared by every analytics path (SPEC §8).

Sums and products are exact: they run in :data:`EXACT`, a 1000-digit context that traps ``Inexact``, so a
result that could not be represented exactly raises instead of being rounded silently. The only rounded
values are ratios (vwap, imbalance, microprice, depth imbalance, divergence), and every one of them goes
through :func:`ratio`: ``Decimal`` division with 28 significant digits, rounding half-even (the default
``decimal`` context, so ``Decimal(n) / Decimal(d)`` in a plain Python shell gives the same string). A
quotient that terminates within 28 digits is exact and keeps Decimal's ideal exponent
(``130228.4000 / 2.00 == 65114.20``). Incremental and from-trades paths call the same function, so they
agree to the last digit.

JSON carries decimals as strings in plain notation (:func:`dec`): ``str(Decimal)`` except that it never
switches to an exponent (``0.00000010`` stays ``0.00000010``, not ``1.0E-7``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, localcontext

__all__ = ["EXACT", "RATIO", "ZERO", "dec", "dec_or_none", "exact", "ratio"]

ZERO = Decimal(0)

EXACT = Context(prec=1000, rounding=ROUND_HALF_EVEN, traps=[Inexact, InvalidOperation])
"""Context for sums, products and integer division: exact, or an ``Inexact`` error."""

RATIO = Context(prec=28, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation])
"""Context for the one rounded operation, :func:`ratio`."""


@contextmanager
def exact() -> Iterator[None]:
    """Run the body in the :data:`EXACT` context (per task: ``decimal`` contexts are context variables)."""
    with localcontext(EXACT):
        yield


def ratio(numerator: Decimal, denominator: Decimal) -> Decimal | None:
    """``numerator / denominator`` to 28 significant digits, half-even; ``None`` when the denominator is 0."""
    if not denominator:
        return None
    return RATIO.divide(numerator, denominator)


def dec(value: Decimal) -> str:
    """A decimal as a JSON string, exact and in plain notation."""
    return format(value, "f")


def dec_or_none(value: Decimal | None) -> str | None:
    """:func:`dec`, passing ``None`` through (JSON null)."""
    return None if value is None else format(value, "f")
