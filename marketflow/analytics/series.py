"""Live bars of one market: one base bar fed trade by trade, and a series per reported interval.

Every configured interval is a multiple of the base interval (their gcd), so a reported bar is the union of
base bars: a trade updates only the open base bar, and when that closes it is merged into each series'
open bar, which is O(cells of the base bar), paid once per base bar instead of once per trade and interval.

A trade whose time is before the open base bar (a backfill, or a trade that arrived after its bar was
closed by the clock) is *late*: it is applied directly to the bar of each series it belongs to, and a
closed bar it corrects is handed out again. Late trades for bars the market no longer holds (evicted from
the window, or before the first trade this market saw) are dropped and counted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from decimal import Decimal

from marketflow.analytics.bars import Bar, PackedBar, apply_trade, bin_floor, merge_into

__all__ = ["IntervalSeries", "MarketBars"]

_POS_INF = Decimal("Infinity")
_NEG_INF = Decimal("-Infinity")
_FOREVER = 2**62

Emit = Callable[["MarketBars", "IntervalSeries", Bar], None]
"""Called with a bar that closed or was corrected after closing."""


class IntervalSeries:
    """The bars of one reported interval: the open one (fed by base bars and late trades) and a window of
    closed ones, sorted by start, at most ``max_bars`` of them."""

    __slots__ = (
        "by_start",
        "closed",
        "evicted_until",
        "interval",
        "interval_us",
        "max_bars",
        "open",
        "starts",
    )

    def __init__(self, interval: str, interval_us: int, max_bars: int) -> None:
        self.interval = interval
        self.interval_us = interval_us
        self.max_bars = max_bars
        self.open: Bar | None = None
        self.closed: list[PackedBar] = []
        self.starts: list[int] = []
        self.by_start: dict[int, PackedBar] = {}
        self.evicted_until = -(2**63)  # bars starting before this were dropped from the window

    def add_closed(self, bar: Bar) -> None:
        """Keep `bar` (packed: read often, changed only by a late trade), or replace the one at its start."""
        kept = PackedBar(bar)
        index = bisect.bisect_left(self.starts, bar.start)
        if bar.start in self.by_start:
            self.closed[index] = self.by_start[bar.start] = kept
            return
        self.starts.insert(index, bar.start)
        self.closed.insert(index, kept)
        self.by_start[bar.start] = kept
        if len(self.closed) > self.max_bars:
            # At most once per closed bar; a list pop of ~1000 pointers is cheaper than a deque's bisect.
            old = self.closed.pop(0)
            del self.starts[0]
            del self.by_start[old.start]
            self.evicted_until = old.start + self.interval_us

    def view(self, base: Bar | None, *, cells: bool) -> list[Bar]:
        """Closed bars, then the open one as it stands with the open base bar in it (a copy if merged)."""
        bars: list[Bar] = [*self.closed]
        current = self.open
        if base is not None and base.trades:
            start = base.start - base.start % self.interval_us
            if current is not None and current.start == start:
                current = current.copy(cells=cells)
            else:
                if current is not None:
                    bars.append(current)
                current = Bar(start, start + self.interval_us)
            merge_into(current, base, cells=cells)
        if current is not None and current.trades:
            bars.append(current)
        return bars


class MarketBars:
    """Bars of one (exchange, symbol): the open base bar and every reported series."""

    __slots__ = (
        "base",
        "base_us",
        "bin",
        "bin_high",
        "bin_low",
        "exchange",
        "first_ts",
        "frontier",
        "late",
        "late_dropped",
        "series",
        "symbol",
    )

    def __init__(
        self,
        exchange: str,
        symbol: str,
        bin: Decimal,
        base_us: int,
        series: list[IntervalSeries],
        first_ts: int,
    ) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.bin = bin
        self.bin_low = (
            _POS_INF  # [bin_low, bin_high): the bin of the last price, so most trades skip a division
        )
        self.bin_high = _NEG_INF
        self.base_us = base_us
        self.base: Bar | None = None
        self.frontier = first_ts - first_ts % base_us  # trades before it are late
        self.first_ts = first_ts
        self.series = series
        self.late = 0
        self.late_dropped = 0

    def rebin(self, price: Decimal) -> None:
        """Make ``bin_low`` the bin of ``price`` (inside ``exact()``)."""
        low = bin_floor(price, self.bin)
        self.bin_low = low
        self.bin_high = low + self.bin

    def add_slow(self, price: Decimal, amount: Decimal, buy: bool, ts: int, large: bool, emit: Emit) -> None:
        """A trade outside the open base bar (inside ``exact()``)."""
        if not self.bin_low <= price < self.bin_high:
            self.rebin(price)
        if ts < self.frontier:
            self._add_late(price, amount, buy, ts, large, emit)
            return
        if self.base is not None:
            self.close_base(emit)
        start = ts - ts % self.base_us
        self._close_series_before(start, emit)
        base = self.base = Bar(start, start + self.base_us)
        self.frontier = start
        apply_trade(base, price, amount, buy, ts, large, self.bin_low)

    def close_base(self, emit: Emit) -> None:
        """Merge the open base bar into every series and forget it."""
        base = self.base
        if base is None:
            return
        self.base = None
        self.frontier = base.end
        for series in self.series:
            start = base.start - base.start % series.interval_us
            current = series.open
            if current is not None and current.start != start:
                series.open = None
                series.add_closed(current)
                emit(self, series, current)
                current = None
            if current is None:
                if series.interval_us == self.base_us:
                    series.open = base  # the base bar is no longer fed, so the series can own it
                    continue
                current = series.open = Bar(start, start + series.interval_us)
            merge_into(current, base)

    def _close_series_before(self, until: int, emit: Emit) -> None:
        for series in self.series:
            current = series.open
            if current is not None and current.end <= until:
                series.open = None
                series.add_closed(current)
                emit(self, series, current)

    def close_until(self, watermark: int, emit: Emit) -> None:
        """Close the bars that end at or before ``watermark``: no trade before it is expected any more."""
        base = self.base
        if base is not None and base.end <= watermark:
            self.close_base(emit)
        if self.base is None and self.frontier < watermark:
            # The gap up to the watermark is closed too: a trade in it is late (it corrects, not opens).
            self.frontier = watermark - watermark % self.base_us
        self._close_series_before(watermark, emit)

    def close_all(self, emit: Emit) -> None:
        """Close every open bar (the input ended); a trade after this only corrects closed bars."""
        self.close_base(emit)
        self._close_series_before(_FOREVER, emit)
        self.frontier = _FOREVER

    def _add_late(self, price: Decimal, amount: Decimal, buy: bool, ts: int, large: bool, emit: Emit) -> None:
        self.late += 1
        dropped = False
        for series in self.series:
            interval_us = series.interval_us
            start = ts - ts % interval_us
            current = series.open
            if current is not None and current.start == start:
                apply_trade(current, price, amount, buy, ts, large, self.bin_low)
                continue
            if current is None and start == self.frontier - self.frontier % interval_us:
                # The period the next base bar merges into: it is still open.
                current = series.open = Bar(start, start + interval_us)
                apply_trade(current, price, amount, buy, ts, large, self.bin_low)
                continue
            kept = series.by_start.get(start)
            if kept is not None:
                bar = kept.unpacked()
            elif start < series.evicted_until or start < self.first_ts - self.first_ts % interval_us:
                dropped = True  # its bar left the window, or predates this market's first trade
                continue
            else:
                bar = Bar(start, start + interval_us)
            apply_trade(bar, price, amount, buy, ts, large, self.bin_low)
            series.add_closed(bar)
            emit(self, series, bar)
        if dropped:
            self.late_dropped += 1
