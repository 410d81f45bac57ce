"""Bars: the aggregate of the trades in one interval, which candles, order flow and profiles are read from.

A :class:`Bar` holds what a candle needs (OHLC by (ts, arrival), volume split by taker side, trade count,
Σ price·amount for the vwap), what order flow adds (trades at or above the large-trade notional) and the
footprint cells: per price bin, the volume of sell-taker (bid) and buy-taker (ask) trades. Every figure is
an exact sum, so a bar can be built trade by trade, or from smaller bars with :func:`merge_into`, and the
result is the same to the last digit.

Trades with an amount ≤ 0 are not trades: every path skips them (they would make the vwap undefined).

Times are integer µs since the epoch (UTC); bars are aligned to epoch multiples of their interval.
Bins follow SPEC §8: ``bin(p) = floor(p / bin) · bin``, named by the lower edge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

from marketflow.analytics.decimal_fmt import ZERO, exact
from marketflow.model import Trade

__all__ = [
    "ASK",
    "BID",
    "Bar",
    "PackedBar",
    "apply_trade",
    "bin_floor",
    "build_bars",
    "default_bin",
    "floor_time",
    "merge_into",
    "normalize_bin",
    "parse_interval",
    "regroup_cells",
]

BID: Final = 0
"""Index of the sell-taker volume in a footprint cell (trades that hit the bid)."""
ASK: Final = 1
"""Index of the buy-taker volume in a footprint cell (trades that lift the ask)."""

_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")
_UNIT_US: Final = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_POS_INF = Decimal("Infinity")
_NEG_INF = Decimal("-Infinity")
_NO_TS_HIGH: Final = 2**63
_NO_TS_LOW: Final = -(2**63)


def parse_interval(text: str) -> int:
    """An interval such as ``"1s"``, ``"15s"``, ``"1m"``, ``"5m"``, ``"1h"``, ``"4h"``, ``"1d"`` in µs."""
    match = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'interval must be a number and a unit s|m|h|d, e.g. "1m" or "4h", got {text!r}')
    return int(match[1]) * _UNIT_US[match[2]]


def floor_time(ts: int, interval_us: int) -> int:
    """Start of the epoch-aligned interval holding ``ts`` (floors negative times too)."""
    return ts - ts % interval_us


def normalize_bin(size: Decimal) -> Decimal:
    """Check a bin size (> 0, finite) and write it without a positive exponent, so bins print as ``65110``."""
    if not isinstance(size, Decimal) or not size.is_finite() or size <= 0:
        raise ValueError(f"bin size must be a finite decimal > 0, got {size!r}")
    exponent = size.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        with exact():
            return size.quantize(Decimal(1))
    return size


def default_bin(reference_price: Decimal) -> Decimal:
    """The bin used when none is configured: ``10 ** (floor(log10(price)) - 3)``.

    That is 1/1000 to 1/10000 of the price, a power of ten: 65114.20 → 10, 3012.5 → 1, 0.5731 → 0.0001.
    The engine takes the first trade it sees of a symbol as the reference, and keeps that bin.
    """
    if not reference_price.is_finite() or reference_price <= 0:
        raise ValueError(f"a default bin needs a price > 0, got {reference_price!r}")
    power = reference_price.adjusted() - 3
    return Decimal(10**power) if power >= 0 else Decimal(1).scaleb(power)


def bin_floor(price: Decimal, size: Decimal) -> Decimal:
    """``floor(price / size) · size``, exactly (call inside :func:`~.decimal_fmt.exact`)."""
    quotient = price // size  # divide-integer truncates toward zero
    if price < 0 and quotient * size != price:
        quotient -= 1
    return quotient * size


class Bar:
    """Mutable aggregate of the trades whose time falls in ``[start, end)``."""

    __slots__ = (
        "buy",
        "cells",
        "close",
        "close_ts",
        "end",
        "high",
        "large",
        "low",
        "open",
        "open_ts",
        "pv",
        "sell",
        "start",
        "trades",
    )

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.open = ZERO
        self.close = ZERO
        self.high = _NEG_INF
        self.low = _POS_INF
        self.open_ts = _NO_TS_HIGH  # (ts of the open, ts of the close): the earliest and latest trade time
        self.close_ts = _NO_TS_LOW
        self.buy = ZERO
        self.sell = ZERO
        self.pv = ZERO
        self.trades = 0
        self.large = 0
        self.cells: dict[Decimal, list[Decimal]] = {}

    @property
    def volume(self) -> Decimal:
        return self.buy + self.sell

    def footprint_cells(self) -> dict[Decimal, list[Decimal]]:
        """The footprint cells (a :class:`PackedBar` makes a fresh dict)."""
        return self.cells

    def copy(self, *, cells: bool = True) -> Bar:
        """An independent copy (footprint cells included only when asked for)."""
        bar = Bar(self.start, self.end)
        merge_into(bar, self, cells=cells)
        return bar

    def __repr__(self) -> str:
        return (
            f"Bar(start={self.start}, trades={self.trades}, open={self.open}, high={self.high}, "
            f"low={self.low}, close={self.close}, buy={self.buy}, sell={self.sell})"
        )


def _read_only(name: str) -> Any:
    def refuse(self: PackedBar, value: object) -> None:
        raise AttributeError(f"a packed bar is read-only ({name}): change a Bar from unpacked()")

    return refuse


def _field(index: int, name: str) -> property:
    def get(self: PackedBar) -> Decimal:
        return Decimal(self.figures.split(" ", 7)[index])

    return property(get, _read_only(name))


class PackedBar(Bar):
    """A closed bar as the live window keeps it: its seven decimals and footprint cells as two strings.

    A ``Bar`` with a few footprint cells is ~1.2 KiB of Python objects (a ``Decimal`` is 104 bytes, a cell a
    dict entry, a list and three of them); packed it is ~0.3 KiB plus ~25 bytes a cell, and a window of
    240 bars per interval stays small however many cells a volatile hour has. Reads decode exactly what
    was written (``str(Decimal)`` round-trips); writes raise: a late trade corrects :meth:`unpacked`, and
    the window keeps the result packed again.
    """

    __slots__ = ("cell_text", "figures")

    def __init__(self, bar: Bar) -> None:  # noqa: D107 - see the class
        self.start = bar.start
        self.end = bar.end
        self.open_ts = bar.open_ts
        self.close_ts = bar.close_ts
        self.trades = bar.trades
        self.large = bar.large
        self.figures = f"{bar.open} {bar.close} {bar.high} {bar.low} {bar.buy} {bar.sell} {bar.pv}"
        cells = bar.footprint_cells()
        self.cell_text = " ".join(f"{price} {bid} {ask}" for price, (bid, ask) in cells.items())

    open = _field(0, "open")
    close = _field(1, "close")
    high = _field(2, "high")
    low = _field(3, "low")
    buy = _field(4, "buy")
    sell = _field(5, "sell")
    pv = _field(6, "pv")

    @property
    def cells(self) -> dict[Decimal, list[Decimal]]:
        return self.footprint_cells()

    @cells.setter
    def cells(self, value: dict[Decimal, list[Decimal]]) -> None:
        _read_only("cells")(self, value)

    def footprint_cells(self) -> dict[Decimal, list[Decimal]]:
        values = iter(self.cell_text.split())
        return {
            Decimal(price): [Decimal(bid), Decimal(ask)]
            for price, bid, ask in zip(values, values, values, strict=True)
        }

    def unpacked(self) -> Bar:
        """A mutable copy."""
        return self.copy()


def apply_trade(
    bar: Bar,
    price: Decimal,
    amount: Decimal,
    buy: bool,
    ts: int,
    large: bool,
    bin_price: Decimal | None,
) -> None:
    """Add one trade that arrived after every trade already in ``bar`` (call inside ``exact()``)."""
    if ts < bar.open_ts:  # an equal ts arrived later, so it is not the first by (ts, arrival)
        bar.open = price
        bar.open_ts = ts
    if ts >= bar.close_ts:  # an equal ts arrived later, so it is the last
        bar.close = price
        bar.close_ts = ts
    if price > bar.high:
        bar.high = price
    if price < bar.low:
        bar.low = price
    if buy:
        bar.buy += amount
    else:
        bar.sell += amount
    bar.pv += price * amount
    bar.trades += 1
    if large:
        bar.large += 1
    if bin_price is not None:
        cell = bar.cells.get(bin_price)
        if cell is None:
            bar.cells[bin_price] = [ZERO, amount] if buy else [amount, ZERO]
        else:
            cell[ASK if buy else BID] += amount


def merge_into(dst: Bar, src: Bar, *, cells: bool = True) -> None:
    """Add ``src``'s trades to ``dst`` as if each arrived after all of ``dst``'s (inside ``exact()``)."""
    if not src.trades:
        return
    if src.open_ts < dst.open_ts:
        dst.open = src.open
        dst.open_ts = src.open_ts
    if src.close_ts >= dst.close_ts:
        dst.close = src.close
        dst.close_ts = src.close_ts
    if src.high > dst.high:
        dst.high = src.high
    if src.low < dst.low:
        dst.low = src.low
    dst.buy += src.buy
    dst.sell += src.sell
    dst.pv += src.pv
    dst.trades += src.trades
    dst.large += src.large
    if cells:
        mine = dst.cells
        for price, (bid, ask) in src.footprint_cells().items():
            cell = mine.get(price)
            if cell is None:
                mine[price] = [bid, ask]
            else:
                cell[BID] += bid
                cell[ASK] += ask


def regroup_cells(cells: dict[Decimal, list[Decimal]], size: Decimal) -> dict[Decimal, list[Decimal]]:
    """Footprint cells re-binned to ``size`` (a multiple of the bin they were made with: the grids nest)."""
    out: dict[Decimal, list[Decimal]] = {}
    with exact():
        for price, (bid, ask) in cells.items():
            key = bin_floor(price, size)
            cell = out.get(key)
            if cell is None:
                out[key] = [bid, ask]
            else:
                cell[BID] += bid
                cell[ASK] += ask
    return out


def build_bars(
    trades: Iterable[Trade],
    interval_us: int,
    *,
    bin: Decimal | None = None,
    large_trade_notional: Decimal | None = None,
) -> list[Bar]:
    """Bars of ``interval_us`` from trades in arrival order (the list order), sorted by start.

    Footprint cells are filled when ``bin`` is given; ``large`` counts trades with price·amount ≥
    ``large_trade_notional`` when it is given.
    """
    bars: dict[int, Bar] = {}
    with exact():
        for trade in trades:
            price = trade.price
            amount = trade.amount
            if amount <= 0:
                continue
            ts = trade.ts
            start = ts - ts % interval_us
            bar = bars.get(start)
            if bar is None:
                bar = bars[start] = Bar(start, start + interval_us)
            large = large_trade_notional is not None and price * amount >= large_trade_notional
            bin_price = None if bin is None else bin_floor(price, bin)
            apply_trade(bar, price, amount, trade.side == "buy", ts, large, bin_price)
    return [bars[start] for start in sorted(bars)]
