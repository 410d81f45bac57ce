"""Brute-force references written straight from SPEC §8, sharing no code with marketflow.analytics.

Each recomputes everything from the raw trades: sort by (ts, arrival), sums over whole groups, bins by
`Fraction` floor, and the value-area walk over every bin of the grid (empty ones included).
"""

from __future__ import annotations

import math
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from fractions import Fraction
from typing import Any

from marketflow.model import Trade, us_to_iso

BIG = Context(prec=2000)
DIV = Context(prec=28, rounding=ROUND_HALF_EVEN)


def s(value: Decimal) -> str:
    return format(value, "f")


def div(n: Decimal, d: Decimal) -> str | None:
    return None if d == 0 else s(DIV.divide(n, d))


def total(values: list[Decimal]) -> Decimal:
    with localcontext(BIG):
        return sum(values, Decimal(0))


def real(trades: list[Trade]) -> list[tuple[int, Trade]]:
    """(arrival index, trade) of the trades with an amount > 0."""
    return [(index, trade) for index, trade in enumerate(trades) if trade.amount > 0]


def bars(
    trades: list[Trade], interval_us: int, since: int | None, until: int | None
) -> dict[int, list[tuple[int, Trade]]]:
    groups: dict[int, list[tuple[int, Trade]]] = defaultdict(list)
    for index, trade in real(trades):
        start = (trade.ts // interval_us) * interval_us
        if (since is None or start >= since) and (until is None or start < until):
            groups[start].append((index, trade))
    return dict(sorted(groups.items()))


def candles(
    trades: list[Trade], interval_us: int, since: int | None = None, until: int | None = None
) -> list[dict[str, Any]]:
    out = []
    for start, group in bars(trades, interval_us, since, until).items():
        ordered = sorted(group, key=lambda item: (item[1].ts, item[0]))
        prices = [trade.price for _, trade in group]
        volume = total([trade.amount for _, trade in group])
        with localcontext(BIG):
            pv = total([trade.price * trade.amount for _, trade in group])
        out.append(
            {
                "start": us_to_iso(start),
                "open": s(ordered[0][1].price),
                "high": s(max(prices)),
                "low": s(min(prices)),
                "close": s(ordered[-1][1].price),
                "volume": s(volume),
                "buy_volume": s(total([t.amount for _, t in group if t.side == "buy"])),
                "sell_volume": s(total([t.amount for _, t in group if t.side == "sell"])),
                "trades": len(group),
                "vwap": div(pv, volume),
            }
        )
    return out


def bin_of(price: Decimal, size: Decimal) -> Decimal:
    with localcontext(BIG):
        return Decimal(math.floor(Fraction(price) / Fraction(size))) * size


def cells(trades: list[Trade], size: Decimal) -> dict[Decimal, tuple[Decimal, Decimal]]:
    """bin → (bid = sell-taker volume, ask = buy-taker volume)."""
    grouped: dict[Decimal, list[Trade]] = defaultdict(list)
    for _, trade in real(trades):
        grouped[bin_of(trade.price, size)].append(trade)
    return {
        price: (
            total([t.amount for t in group if t.side == "sell"]),
            total([t.amount for t in group if t.side == "buy"]),
        )
        for price, group in grouped.items()
    }


def profile(
    trades: list[Trade],
    size: Decimal,
    value_area: Decimal,
    since: int | None = None,
    until: int | None = None,
) -> dict[str, Any]:
    chosen = [t for t in trades if (since is None or t.ts >= since) and (until is None or t.ts < until)]
    grid = cells(chosen, size)
    if not grid:
        return {"poc": None, "vah": None, "val": None, "value_area": "0", "total_volume": "0", "bins": []}
    volume = {price: total([bid, ask]) for price, (bid, ask) in grid.items()}
    everything = total(list(volume.values()))
    poc = min(volume, key=lambda price: (-volume[price], price))
    low = high = poc
    lowest, highest = min(volume), max(volume)
    with localcontext(BIG):
        target = value_area * everything
        area = volume[poc]
        while area < target:
            up = high + size if high < highest else None
            down = low - size if low > lowest else None
            if up is None and down is None:
                break
            if up is not None and (
                down is None or volume.get(up, Decimal(0)) >= volume.get(down, Decimal(0))
            ):
                high = up
                area += volume.get(up, Decimal(0))
            else:
                assert down is not None
                low = down
                area += volume.get(down, Decimal(0))
    return {
        "poc": s(poc),
        "vah": s(high),
        "val": s(low),
        "value_area": s(area),
        "total_volume": s(everything),
        "bins": [
            {
                "price": s(price),
                "volume": s(volume[price]),
                "buy_volume": s(grid[price][1]),
                "sell_volume": s(grid[price][0]),
            }
            for price in sorted(grid)
        ],
    }


def footprint(
    trades: list[Trade], size: Decimal, ratio: Decimal = Decimal(3), stacked_min: int = 3
) -> dict[str, Any]:
    grid = cells(trades, size)
    zero = (Decimal(0), Decimal(0))
    with localcontext(BIG):
        ask_imb = {p: grid[p][1] > 0 and grid[p][1] >= ratio * grid.get(p - size, zero)[0] for p in grid}
        bid_imb = {p: grid[p][0] > 0 and grid[p][0] >= ratio * grid.get(p + size, zero)[1] for p in grid}
        stacks: list[dict[str, Any]] = []
        for side, flags in (("ask", ask_imb), ("bid", bid_imb)):
            price, top = min(grid), max(grid)
            run: list[Decimal] = []
            while price <= top + size:
                if flags.get(price, False):
                    run.append(price)
                else:
                    if len(run) >= stacked_min:
                        stacks.append(
                            {"side": side, "low": s(run[0]), "high": s(run[-1]), "levels": len(run)}
                        )
                    run = []
                price += size
        stacks.sort(key=lambda item: (Decimal(item["low"]), item["side"] != "ask"))
        levels = [
            {
                "price": s(p),
                "bid_volume": s(grid[p][0]),
                "ask_volume": s(grid[p][1]),
                "delta": s(grid[p][1] - grid[p][0]),
                "bid_imbalance": bid_imb[p],
                "ask_imbalance": ask_imb[p],
            }
            for p in sorted(grid)
        ]
    return {"bin": s(size), "levels": levels, "stacked_imbalances": stacks}


def order_flow(
    trades: list[Trade],
    interval_us: int,
    large: Decimal,
    since: int | None = None,
    until: int | None = None,
    size: Decimal | None = None,
) -> list[dict[str, Any]]:
    out = []
    cvd = Decimal(0)
    for start, group in bars(trades, interval_us, since, until).items():
        buy = total([t.amount for _, t in group if t.side == "buy"])
        sell = total([t.amount for _, t in group if t.side == "sell"])
        with localcontext(BIG):
            cvd += buy - sell
            big = sum(1 for _, t in group if t.price * t.amount >= large)
            item: dict[str, Any] = {
                "start": us_to_iso(start),
                "buy_volume": s(buy),
                "sell_volume": s(sell),
                "delta": s(buy - sell),
                "cvd": s(cvd),
                "trades": len(group),
                "large_trades": big,
                "imbalance": div(buy, buy + sell),
            }
        if size is not None:
            item["footprint"] = footprint([t for _, t in group], size)
        out.append(item)
    return out
