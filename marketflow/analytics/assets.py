"""One asset across markets (SPEC §15): every market's trades in base units, on one time and price grid.

Volumes become base units per market:

- amounts in base units stay as they are;
- linear contracts: ``amount·contract_value``, exact — and since that is one factor for every trade of the
  market, a bar (or profile cell) of raw amounts times the factor equals the bar of converted trades to the
  last digit, so these markets reuse the per-market machinery (live engine, SQL aggregates, scans) and
  :func:`scale_bar` / :func:`scale_cells` afterwards;
- inverse contracts: ``amount·contract_value / price`` depends on each trade's price, rounded half-even to
  :data:`INVERSE_PLACES` decimal places (:func:`inverse_base`, the one inexact step). A bar of raw amounts
  cannot be converted, so these markets are folded trade by trade (:class:`ConvertedFold`) from storage's
  trades and the trade ring's not yet stored ones.

The large-trade test keeps each market's own notional (SPEC §11) on the raw amount; prices are the
markets' own. Merging per-market bars with :func:`~.bars.merge_into` gives the totals (exact sums).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

import attrs

from marketflow.analytics.bars import ASK, BID, Bar, apply_trade, bin_floor, merge_into
from marketflow.analytics.decimal_fmt import EXACT, ZERO, dec, exact
from marketflow.analytics.order_flow import order_flow_json
from marketflow.model import Contract, Trade

if TYPE_CHECKING:
    from marketflow.storage.aggregates import ScanRow

__all__ = [
    "DOLLARS",
    "INVERSE_PLACES",
    "AssetMarket",
    "ConvertedFold",
    "asset_order_flow_json",
    "base_amount",
    "inverse_base",
    "merge_bars",
    "scale_bar",
    "scale_cells",
]

INVERSE_PLACES: Final = 12
"""Decimal places an inverse contract's base amount is rounded to (half-even)."""
DOLLARS: Final = ("USD", "USDC", "USDT")
"""Quotes counted as one dollar by default."""

_SCALE: Final = 10**INVERSE_PLACES


@attrs.frozen
class AssetMarket:
    """One configured market of an asset, with what its amounts count."""

    exchange: str
    market: str
    symbol: str
    base: str
    quote: str
    derivative: bool
    """Perpetual or dated contract (not spot)."""
    contract: Contract | None
    """None: amounts are base units."""

    @property
    def key(self) -> str:
        """``exchange/market/symbol``, the name a market has in cross-market responses."""
        return f"{self.exchange}/{self.market}/{self.symbol}"

    @property
    def inverse(self) -> bool:
        return self.contract is not None and self.contract.inverse

    def conversion(self) -> dict[str, Any] | None:
        """How its amounts become base units (None: they are base units)."""
        if self.contract is None:
            return None
        if self.contract.inverse:
            return {
                "market": self.key,
                "rule": "amount*contract_value/price",
                "contract_value": dec(self.contract.value),
                "rounding": f"half_even, {INVERSE_PLACES} dp",
            }
        return {
            "market": self.key,
            "rule": "amount*contract_value",
            "contract_value": dec(self.contract.value),
            "rounding": None,
        }


def inverse_base(price: Decimal, amount: Decimal, value: Decimal) -> Decimal:
    """``amount·value / price`` rounded half-even to :data:`INVERSE_PLACES` places, exactly (rationals)."""
    quotient = Fraction(amount) * Fraction(value) / Fraction(price)
    return Decimal(round(quotient * _SCALE)).scaleb(-INVERSE_PLACES, EXACT)


def base_amount(price: Decimal, amount: Decimal, contract: Contract | None) -> Decimal:
    """A trade's amount in base units (see the module docstring)."""
    if contract is None:
        return amount
    if contract.inverse:
        return inverse_base(price, amount, contract.value)
    return EXACT.multiply(amount, contract.value)


def scale_bar(bar: Bar, factor: Decimal) -> Bar:
    """A copy of ``bar`` with its volumes (and Σ price·amount, cells) times ``factor``; exact."""
    out = bar.copy(cells=False)
    with exact():
        out.buy = bar.buy * factor
        out.sell = bar.sell * factor
        out.pv = bar.pv * factor
        out.cells = {p: [bid * factor, ask * factor] for p, (bid, ask) in bar.footprint_cells().items()}
    return out


def scale_cells(cells: Mapping[Decimal, Sequence[Decimal]], factor: Decimal) -> dict[Decimal, list[Decimal]]:
    """Profile cells (bin → [sell-taker, buy-taker]) times ``factor``; exact."""
    with exact():
        return {price: [cell[BID] * factor, cell[ASK] * factor] for price, cell in cells.items()}


class ConvertedFold:
    """Folds one inverse market's trades, in any order, into bars of ``step_us`` (and/or profile cells at
    ``size``) in base units: open/close by (ts, id) whatever the order they come in."""

    def __init__(
        self,
        contract: Contract,
        step_us: int | None,
        *,
        large: Decimal | None = None,
        size: Decimal | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> None:
        self.contract = contract
        self.step = step_us
        self.large = large
        self.size = size
        self.since = since
        self.until = until
        self.bars: dict[int, Bar] = {}
        self.cells: dict[Decimal, list[Decimal]] = {}
        self._keys: dict[int, list[tuple[int, str]]] = {}

    def consume(self, rows: Sequence[ScanRow]) -> bool:
        """A chunk of stored rows (``TradeScan.scan_trades``'s callback); always True (read them all)."""
        for ts, id_, price, amount, side in rows:
            self.add(ts, id_, Decimal(price), Decimal(amount), side == "buy")
        return True

    def add_trades(self, trades: Iterable[Trade]) -> None:
        for trade in trades:
            self.add(trade.ts, trade.id, trade.price, trade.amount, trade.side == "buy")

    def add(self, ts: int, id_: str, price: Decimal, amount: Decimal, buy: bool) -> None:
        """One trade (ignored outside ``[since, until)`` or with an amount ≤ 0)."""
        if amount <= 0 or (self.since is not None and ts < self.since):
            return
        if self.until is not None and ts >= self.until:
            return
        base = inverse_base(price, amount, self.contract.value)
        with exact():
            if self.size is not None:
                key_price = bin_floor(price, self.size)
                cell = self.cells.get(key_price)
                if cell is None:
                    cell = self.cells[key_price] = [ZERO, ZERO]
                cell[ASK if buy else BID] += base
            if self.step is None:
                return
            start = ts - ts % self.step
            key = (ts, id_)
            bar = self.bars.get(start)
            if bar is None:
                bar = self.bars[start] = Bar(start, start + self.step)
                self._keys[start] = [key, key]
            bounds = self._keys[start]
            saved = (bar.open, bar.open_ts, bar.close, bar.close_ts)
            is_large = self.large is not None and self.contract.notional(price, amount) >= self.large
            apply_trade(bar, price, base, buy, ts, is_large, None)
            if bar.trades == 1:
                return
            # apply_trade takes arrival order; here the order is (ts, id) whatever the arrival.
            bar.open, bar.open_ts, bar.close, bar.close_ts = saved
            if key < bounds[0]:
                bar.open, bar.open_ts, bounds[0] = price, ts, key
            if key > bounds[1]:
                bar.close, bar.close_ts, bounds[1] = price, ts, key

    def sorted_bars(self) -> list[Bar]:
        return [self.bars[start] for start in sorted(self.bars)]


def merge_bars(per_market: Mapping[str, Sequence[Bar]]) -> list[Bar]:
    """The bars of every market merged by start (exact sums; open/close by time across markets)."""
    total: dict[int, Bar] = {}
    with exact():
        for bars in per_market.values():
            for bar in bars:
                into = total.get(bar.start)
                if into is None:
                    into = total[bar.start] = Bar(bar.start, bar.end)
                merge_into(into, bar, cells=False)
    return [total[start] for start in sorted(total)]


def asset_order_flow_json(per_market: Mapping[str, Sequence[Bar]]) -> dict[str, Any]:
    """``/order-flow?asset=`` bars: the totals of every market (cvd across the total), and ``by_venue``:
    each market's buy and sell volume, delta and its own cvd, for the markets with trades in the bar."""
    merged = merge_bars(per_market)
    body = order_flow_json(merged)
    by_start: dict[int, dict[str, dict[str, str]]] = {bar.start: {} for bar in merged}
    with exact():
        for key in sorted(per_market):
            cvd = ZERO
            for bar in per_market[key]:
                if not bar.trades:
                    continue
                delta = bar.buy - bar.sell
                cvd += delta
                by_start[bar.start][key] = {
                    "buy_volume": dec(bar.buy),
                    "sell_volume": dec(bar.sell),
                    "delta": dec(delta),
                    "cvd": dec(cvd),
                }
    for bar, item in zip(merged, body["bars"], strict=True):
        item["by_venue"] = by_start[bar.start]
    return body
