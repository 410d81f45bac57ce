"""Order flow per bar (SPEC §8) and footprints with diagonal and stacked imbalances.

Per bar (bar = candle interval, epoch-aligned; a range holds the bars whose start is in ``[since, until)``):

- ``buy_volume``/``sell_volume`` by taker side, ``delta = buy − sell``, ``cvd`` = running Σ delta from the
  first bar of the range, ``trades``;
- ``imbalance = buy / (buy + sell)`` through :func:`~.decimal_fmt.ratio`, JSON null when buy + sell = 0;
- ``large_trades`` = trades with ``price · amount ≥ large_trade_notional``.

Footprint (per bar, per bin ``p`` of the grid): ``bid_volume`` = sell-taker volume, ``ask_volume`` =
buy-taker volume. Imbalances compare diagonally, as footprint charts do (a buyer lifting the ask at ``p``
against a seller hitting the bid one level lower), bins without trades counting 0:

- ask imbalance at ``p``: ``ask(p) > 0`` and ``ask(p) ≥ ratio · bid(p − bin)``;
- bid imbalance at ``p``: ``bid(p) > 0`` and ``bid(p) ≥ ratio · ask(p + bin)``;
- stacked imbalance: a maximal run of at least ``stacked_min`` (default 3) consecutive grid bins all
  imbalanced on the same side. ``ratio`` defaults to 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import attrs

from marketflow.analytics.bars import (
    ASK,
    BID,
    Bar,
    build_bars,
    default_bin,
    normalize_bin,
    parse_interval,
    regroup_cells,
)
from marketflow.analytics.candles import select_bars
from marketflow.analytics.decimal_fmt import ZERO, dec, dec_or_none, exact, ratio
from marketflow.model import Trade, us_to_iso

__all__ = [
    "DEFAULT_IMBALANCE_RATIO",
    "DEFAULT_STACKED_MIN",
    "Footprint",
    "FootprintLevel",
    "StackedImbalance",
    "compute_order_flow_from_trades",
    "footprint",
    "footprint_json",
    "order_flow_json",
]

DEFAULT_IMBALANCE_RATIO: Final = Decimal(3)
DEFAULT_STACKED_MIN: Final = 3


@attrs.frozen
class FootprintLevel:
    price: Decimal
    bid_volume: Decimal
    ask_volume: Decimal
    bid_imbalance: bool
    ask_imbalance: bool


@attrs.frozen
class StackedImbalance:
    side: str  # "ask" (buyers) | "bid" (sellers)
    low: Decimal
    high: Decimal
    levels: int


@attrs.frozen
class Footprint:
    bin: Decimal
    levels: tuple[FootprintLevel, ...]  # traded bins, ascending price
    stacked: tuple[StackedImbalance, ...]  # ascending by low price, asks before bids at the same low


def footprint(
    cells: Mapping[Decimal, Sequence[Decimal]],
    size: Decimal,
    imbalance_ratio: Decimal = DEFAULT_IMBALANCE_RATIO,
    stacked_min: int = DEFAULT_STACKED_MIN,
) -> Footprint:
    """The footprint of one bar's cells (bin → [bid volume, ask volume]) on a grid of ``size``."""
    prices = sorted(cells)
    levels: list[FootprintLevel] = []
    with exact():
        for price in prices:
            bid, ask = cells[price][BID], cells[price][ASK]
            below = cells.get(price - size)
            above = cells.get(price + size)
            ask_imb = ask > 0 and ask >= imbalance_ratio * (below[BID] if below is not None else ZERO)
            bid_imb = bid > 0 and bid >= imbalance_ratio * (above[ASK] if above is not None else ZERO)
            levels.append(FootprintLevel(price, bid, ask, bid_imb, ask_imb))
        stacked = _stacks(levels, size, "ask", stacked_min) + _stacks(levels, size, "bid", stacked_min)
    stacked.sort(key=lambda item: (item.low, item.side != "ask"))
    return Footprint(size, tuple(levels), tuple(stacked))


def _stacks(
    levels: list[FootprintLevel], size: Decimal, side: str, stacked_min: int
) -> list[StackedImbalance]:
    out: list[StackedImbalance] = []
    run: list[Decimal] = []
    for level in levels:
        flagged = level.ask_imbalance if side == "ask" else level.bid_imbalance
        if flagged and run and level.price == run[-1] + size:
            run.append(level.price)
            continue
        if len(run) >= stacked_min:
            out.append(StackedImbalance(side, run[0], run[-1], len(run)))
        run = [level.price] if flagged else []
    if len(run) >= stacked_min:
        out.append(StackedImbalance(side, run[0], run[-1], len(run)))
    return out


def footprint_json(fp: Footprint) -> dict[str, Any]:
    """The ``footprint`` member of an order-flow bar."""
    with exact():
        levels = [
            {
                "price": dec(level.price),
                "bid_volume": dec(level.bid_volume),
                "ask_volume": dec(level.ask_volume),
                "delta": dec(level.ask_volume - level.bid_volume),
                "bid_imbalance": level.bid_imbalance,
                "ask_imbalance": level.ask_imbalance,
            }
            for level in fp.levels
        ]
    return {
        "bin": dec(fp.bin),
        "levels": levels,
        "stacked_imbalances": [
            {"side": item.side, "low": dec(item.low), "high": dec(item.high), "levels": item.levels}
            for item in fp.stacked
        ],
    }


def order_flow_json(
    bars: Iterable[Bar],
    *,
    footprint_bin: Decimal | None = None,
    cells_bin: Decimal | None = None,
    imbalance_ratio: Decimal = DEFAULT_IMBALANCE_RATIO,
    stacked_min: int = DEFAULT_STACKED_MIN,
) -> dict[str, Any]:
    """``/order-flow`` JSON of bars (ascending); footprints when ``footprint_bin`` is given.

    ``cells_bin`` is the bin the bars' cells were built with; ``footprint_bin`` must be a multiple of it.
    """
    out: list[dict[str, Any]] = []
    with exact():
        cvd = ZERO
        for bar in bars:
            buy, sell = bar.buy, bar.sell
            delta = buy - sell
            cvd += delta
            item: dict[str, Any] = {
                "start": us_to_iso(bar.start),
                "buy_volume": dec(buy),
                "sell_volume": dec(sell),
                "delta": dec(delta),
                "cvd": dec(cvd),
                "trades": bar.trades,
                "large_trades": bar.large,
                "imbalance": dec_or_none(ratio(buy, buy + sell)),
            }
            if footprint_bin is not None:
                cells = bar.footprint_cells()
                if footprint_bin != cells_bin:
                    cells = regroup_cells(cells, footprint_bin)
                item["footprint"] = footprint_json(
                    footprint(cells, footprint_bin, imbalance_ratio, stacked_min)
                )
            out.append(item)
    return {"bars": out}


def compute_order_flow_from_trades(
    trades: Iterable[Trade],
    interval: str | int,
    *,
    since: int | None = None,
    until: int | None = None,
    large_trade_notional: Decimal = Decimal("100000"),
    footprint: bool = False,
    bin: Decimal | None = None,
    imbalance_ratio: Decimal = DEFAULT_IMBALANCE_RATIO,
    stacked_min: int = DEFAULT_STACKED_MIN,
) -> dict[str, Any]:
    """``/order-flow`` JSON for one market's trades (in arrival order).

    The footprint bin defaults to :func:`~.bars.default_bin` of the first trade with an amount > 0.
    """
    interval_us = parse_interval(interval) if isinstance(interval, str) else interval
    trades = list(trades)
    size: Decimal | None = None
    if footprint:
        if bin is not None:
            size = normalize_bin(bin)
        else:
            first = next((trade for trade in trades if trade.amount > 0), None)
            size = default_bin(first.price) if first is not None else Decimal(1)
    bars = build_bars(trades, interval_us, bin=size, large_trade_notional=large_trade_notional)
    return order_flow_json(
        select_bars(bars, since, until),
        footprint_bin=size,
        cells_bin=size,
        imbalance_ratio=imbalance_ratio,
        stacked_min=stacked_min,
    )
