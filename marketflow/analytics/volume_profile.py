"""Volume profile (SPEC §8): volume per price bin over trades with ``since ≤ ts < until``.

- ``bin(p) = floor(p / bin) · bin``; a bin is named by its lower edge. Without a configured or requested
  bin, :func:`~.bars.default_bin` of a reference price (``10 ** (floor(log10(price)) - 3)``).
- POC: the bin with the most volume; on a tie, the lowest such price.
- Value area: start at the POC; while it holds less than ``value_area × total``, add the next bin up or
  down on the grid (bins without trades count 0), the one with more volume, the upper one on a tie; when
  one side is past the traded range, the other. VAH/VAL are the highest/lowest bin in the area.

Bins without trades never end a walk (adding one changes nothing), so the walk here jumps straight to the
next traded bin on the side that would reach it, and VAH/VAL are always traded bins: the cost is linear
in traded bins, whatever the bin size. JSON ``value_area`` is the volume the value area holds (a decimal
string), ``bins`` lists the traded bins in ascending price.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from marketflow.analytics.bars import ASK, BID, bin_floor, default_bin, normalize_bin
from marketflow.analytics.decimal_fmt import ZERO, dec, dec_or_none, exact
from marketflow.model import Trade

__all__ = [
    "ProfileBin",
    "VolumeProfile",
    "compute_volume_profile_from_trades",
    "profile_cells_from_trades",
    "profile_json",
    "value_area_walk",
    "volume_profile",
]


@attrs.frozen
class ProfileBin:
    price: Decimal
    buy_volume: Decimal
    sell_volume: Decimal

    @property
    def volume(self) -> Decimal:
        return self.buy_volume + self.sell_volume


@attrs.frozen
class VolumeProfile:
    """A computed profile; the price fields are None when there were no trades."""

    poc: Decimal | None
    vah: Decimal | None
    val: Decimal | None
    value_area_volume: Decimal
    total_volume: Decimal
    bins: tuple[ProfileBin, ...]


def value_area_walk(
    prices: Sequence[Decimal], volumes: Sequence[Decimal], size: Decimal, value_area: Decimal
) -> tuple[int, int, int, Decimal]:
    """(poc, val, vah) as indexes into ``prices`` (ascending traded bins, not empty) and the area volume."""
    poc = 0
    for index in range(1, len(volumes)):
        if volumes[index] > volumes[poc]:  # strictly more: a tie keeps the lower price
            poc = index
    with exact():
        target = value_area * sum(volumes, ZERO)
        area = volumes[poc]
        low = high = poc
        last = len(prices) - 1
        while area < target and (low > 0 or high < last):
            if low > 0 and high < last:
                up = volumes[high + 1] if prices[high + 1] == prices[high] + size else ZERO
                down = volumes[low - 1] if prices[low - 1] == prices[low] - size else ZERO
                # Taking the upper bin when it is empty means the lower one is empty too: the grid walk would
                # add empty upper bins (tie → up) until the next traded one, which then wins against 0.
                go_up = up >= down
            else:
                go_up = high < last
            if go_up:
                high += 1
                area += volumes[high]
            else:
                low -= 1
                area += volumes[low]
    return poc, low, high, area


def volume_profile(
    cells: Mapping[Decimal, Sequence[Decimal]], size: Decimal, value_area: Decimal
) -> VolumeProfile:
    """The profile of footprint-style cells (bin → [sell-taker volume, buy-taker volume]) of bin ``size``."""
    prices = sorted(cells)
    if not prices:
        return VolumeProfile(None, None, None, ZERO, ZERO, ())
    with exact():
        bins = tuple(ProfileBin(price, cells[price][ASK], cells[price][BID]) for price in prices)
        volumes = [item.volume for item in bins]
        total = sum(volumes, ZERO)
    poc, low, high, area = value_area_walk(prices, volumes, size, value_area)
    return VolumeProfile(prices[poc], prices[high], prices[low], area, total, bins)


def profile_json(profile: VolumeProfile) -> dict[str, Any]:
    """``/volume-profile`` JSON."""
    return {
        "poc": dec_or_none(profile.poc),
        "vah": dec_or_none(profile.vah),
        "val": dec_or_none(profile.val),
        "value_area": dec(profile.value_area_volume),
        "total_volume": dec(profile.total_volume),
        "bins": [
            {
                "price": dec(item.price),
                "volume": dec(item.volume),
                "buy_volume": dec(item.buy_volume),
                "sell_volume": dec(item.sell_volume),
            }
            for item in profile.bins
        ],
    }


def profile_cells_from_trades(
    trades: Iterable[Trade], since: int | None, until: int | None, size: Decimal | None
) -> tuple[dict[Decimal, list[Decimal]], Decimal | None]:
    """Cells of the trades with ``since ≤ ts < until`` and the bin used (default: the first such trade's)."""
    cells: dict[Decimal, list[Decimal]] = {}
    with exact():
        for trade in trades:
            ts = trade.ts
            amount = trade.amount
            if (since is not None and ts < since) or (until is not None and ts >= until) or amount <= 0:
                continue
            if size is None:
                size = default_bin(trade.price)
            key = bin_floor(trade.price, size)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = [ZERO, ZERO]
            cell[ASK if trade.side == "buy" else BID] += amount
    return cells, size


def compute_volume_profile_from_trades(
    trades: Iterable[Trade],
    *,
    since: int | None = None,
    until: int | None = None,
    bin: Decimal | None = None,
    value_area: Decimal = Decimal("0.70"),
) -> dict[str, Any]:
    """``/volume-profile`` JSON for one market's trades; ``bin`` None: the default bin of the first trade."""
    cells, size = profile_cells_from_trades(trades, since, until, None if bin is None else normalize_bin(bin))
    if size is None:
        return profile_json(VolumeProfile(None, None, None, ZERO, ZERO, ()))
    return profile_json(volume_profile(cells, size, value_area))
