"""A trade's price and amount: exact, finite and above zero (no venue prints a trade at or below zero).

Every venue's frame decoder and REST trade parser checks both before it makes a `Trade`: a price of `-1` or
an amount of `0` is refused like a `NaN` is, the frame counted malformed (a REST page refused) with an error
naming the field and the value as sent. The hot paths keep the check almost free:

- values that repeat (prices; Bybit, OKX and Coinbase amounts) go through a table `positive_decimal` fills
  with checked values only: `table.get(text) or positive_decimal(table, text, field)` is one lookup when
  the text was seen before, and the check runs once per distinct text;
- values msgspec decodes into `Decimal` are checked inline (`is_finite()` and one comparison each), with
  `bad_trade` or `positive` naming what was wrong.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NoReturn

import msgspec

__all__ = ["TRADE_VALUES_MAX", "bad_trade", "bad_trade_value", "positive", "positive_decimal"]

TRADE_VALUES_MAX = 20_000
"""Distinct price/amount strings a decoder's trade table keeps before it starts over (a few MB at most)."""
_ZERO = Decimal(0)


def bad_trade_value(field: str, value: object) -> NoReturn:
    """Refuse a trade's `field` (`price`, `amount`) that is not a finite decimal above zero."""
    raise msgspec.DecodeError(f"trade {field} not a finite decimal above zero: {str(value)[:40]!r}")


def bad_trade(price: Decimal, amount: Decimal) -> NoReturn:
    """Refuse a trade whose price or amount (decoded `Decimal`s) is not a finite decimal above zero, naming
    the first that is not: called once an inline check failed."""
    positive(price, "price")
    positive(amount, "amount")
    raise AssertionError("bad_trade called on a good trade")


def positive_decimal(
    table: dict[str, Decimal], text: str, field: str, limit: int = TRADE_VALUES_MAX
) -> Decimal:
    """The finite Decimal above zero of `text`, kept in `table` as the one shared object of that text;
    `msgspec.DecodeError` naming `field` otherwise. Called once a lookup missed, as
    `table.get(text) or positive_decimal(table, text, field)` (it does not look again). Fill `table` only
    through here: every entry is then checked, so a lookup that hits needs no check."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise msgspec.DecodeError(f"trade {field} not a decimal: {text[:40]!r}") from None
    if not value.is_finite() or value <= _ZERO:
        bad_trade_value(field, text)
    if len(table) >= limit:
        table.clear()
    table[text] = value
    return value


def positive(value: Decimal, field: str) -> Decimal:
    """`value` when it is a finite decimal above zero, else `msgspec.DecodeError` naming `field`: for values
    msgspec decoded straight into `Decimal`, which takes `"NaN"`, `"-1"` or `0`."""
    if value.is_finite() and value > _ZERO:
        return value
    bad_trade_value(field, value)
