"""Candles (SPEC §8): OHLC, volume by taker side, trade count and vwap per epoch-aligned interval.

- ``start`` = the interval's start, a multiple of the interval since the Unix epoch (UTC);
- ``open``/``close`` = the price of the first/last trade by (ts, arrival order);
- ``vwap`` = Σ(price·amount) / Σ(amount) through :func:`~.decimal_fmt.ratio` (28 significant digits).

A range query returns the candles whose ``start`` is in ``[since, until)`` in ascending order; with a
``limit``, the first ``limit`` of them when ``since`` is given, else the latest ``limit`` (as exchanges'
kline endpoints do).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from marketflow.analytics.bars import Bar, build_bars, parse_interval
from marketflow.analytics.decimal_fmt import dec, ratio
from marketflow.model import Trade, us_to_iso

__all__ = [
    "Candle",
    "candle_from_bar",
    "candle_json",
    "compute_candles_from_trades",
    "limit_bars",
    "select_bars",
]


class Candle(msgspec.Struct, frozen=True):
    """A closed (or corrected) candle: a row of table ``candles`` (PK exchange, symbol, interval, start)."""

    exchange: str
    symbol: str
    interval: str
    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    trades: int
    vwap: Decimal


def candle_from_bar(bar: Bar, exchange: str, symbol: str, interval: str) -> Candle:
    """The candle of a bar that holds at least one trade."""
    volume = bar.buy + bar.sell
    vwap = ratio(bar.pv, volume)
    if vwap is None:
        raise ValueError(f"bar at {bar.start} has no volume, so no candle")
    return Candle(
        exchange=exchange,
        symbol=symbol,
        interval=interval,
        start=bar.start,
        open=bar.open,
        high=bar.high,
        low=bar.low,
        close=bar.close,
        volume=volume,
        buy_volume=bar.buy,
        sell_volume=bar.sell,
        trades=bar.trades,
        vwap=vwap,
    )


def candle_json(candle: Candle | Bar) -> dict[str, Any]:
    """One element of ``/candles``' ``candles`` list."""
    if isinstance(candle, Bar):
        candle = candle_from_bar(candle, "", "", "")
    return {
        "start": us_to_iso(candle.start),
        "open": dec(candle.open),
        "high": dec(candle.high),
        "low": dec(candle.low),
        "close": dec(candle.close),
        "volume": dec(candle.volume),
        "buy_volume": dec(candle.buy_volume),
        "sell_volume": dec(candle.sell_volume),
        "trades": candle.trades,
        "vwap": dec(candle.vwap),
    }


def select_bars(bars: Iterable[Bar], since: int | None, until: int | None) -> list[Bar]:
    """The bars (sorted by start) whose start is in ``[since, until)``; ``None`` leaves a side open."""
    return [
        bar
        for bar in bars
        if (since is None or bar.start >= since) and (until is None or bar.start < until) and bar.trades
    ]


def limit_bars(bars: Sequence[Bar], limit: int | None, *, from_start: bool) -> Sequence[Bar]:
    """The first (``from_start``) or last ``limit`` bars; all of them when ``limit`` is None."""
    if limit is None:
        return bars
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if from_start:
        return bars[:limit]
    return bars[len(bars) - limit :] if limit else []


def compute_candles_from_trades(
    trades: Iterable[Trade],
    interval: str | int,
    *,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """``/candles`` JSON for one market's trades (given in arrival order), ``interval`` as text or µs."""
    interval_us = parse_interval(interval) if isinstance(interval, str) else interval
    bars = select_bars(build_bars(trades, interval_us), since, until)
    chosen = limit_bars(bars, limit, from_start=since is not None)
    return {"candles": [candle_json(bar) for bar in chosen]}
