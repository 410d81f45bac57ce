"""`/liquidations?asset=` and `/derivatives?asset=` (SPEC §15): one asset's liquidations and derivatives
samples merged across its contract markets, in base units; and the `liquidations_buy`,
`liquidations_sell`, `oi_change` fields of `/order-flow?asset=` bars.

- Liquidations: every market's forced orders, newest first, each with `amount` in base units of the asset
  (converted like trades: linear `amount·contract_value`, inverse `amount·contract_value / price` to 12
  places half-even) beside `venue_amount` as the venue sent it, and the totals per side.
- Derivatives: at every sample instant of any market, each market's last known state (carried forward:
  samples only carry what changed), open interest summed in base units (inverse: converted at the
  market's mark price of that state) and funding as the open-interest-weighted mean of the markets that
  have both; `by_venue` holds each market's own values. `venues` is the state at the end of the range.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import msgspec

from marketflow.analytics.assets import AssetMarket, base_amount
from marketflow.analytics.decimal_fmt import ZERO, dec, dec_or_none, exact, ratio
from marketflow.api.asset_queries import AssetView, asset_view
from marketflow.api.market_queries import (
    DEFAULT_ROWS,
    _start_us,
    bar_fields,
    fetch_liquidations,
    fetch_samples,
)
from marketflow.api.params import check_range, parse_limit
from marketflow.api.queries import QueryContext
from marketflow.model import DerivativesTick, Liquidation, us_to_iso

__all__ = ["annotate_asset_order_flow", "asset_derivatives", "asset_liquidations", "base_samples"]


def _contracts(view: AssetView) -> tuple[AssetMarket, ...]:
    return tuple(m for m in view.markets if m.derivative)


def _header(
    ctx: QueryContext, view: AssetView, since: int | None, until: int | None, channel: str
) -> dict[str, Any]:
    narrowed = attrs.evolve(view, markets=_contracts(view))
    return narrowed.header(ctx, 0 if since is None else since, until, (channel,))


async def asset_liquidations(
    ctx: QueryContext,
    asset: str | None,
    markets: str | None = None,
    quotes: str | None = None,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """`/liquidations?asset=`: `{"liquidations": [...], "count": N}` newest first across the asset's
    contract markets, amounts in base units; `totals` per side."""
    view = asset_view(ctx, asset, markets, quotes)
    count = parse_limit(limit, DEFAULT_ROWS)
    check_range(since, until)
    rows: list[tuple[int, str, str, dict[str, Any]]] = []
    totals = {"buy": ZERO, "sell": ZERO}
    for m in _contracts(view):
        for liq in await fetch_liquidations(ctx, m.exchange, m.symbol, since, until, count):
            base = base_amount(liq.price, liq.amount, m.contract)
            item = {
                "market": m.key,
                "exchange": liq.exchange,
                "symbol": liq.symbol,
                "ts": us_to_iso(liq.ts),
                "side": liq.side,
                "price": dec(liq.price),
                "amount": dec(base),
                "venue_amount": dec(liq.amount),
            }
            rows.append((liq.ts, m.key, liq.id, item))
    rows.sort(key=lambda r: (r[0], r[1], r[2]), reverse=True)
    kept = [r[3] for r in rows[:count]]
    with exact():
        for item in kept:
            totals[item["side"]] += Decimal(item["amount"])
    body = _header(ctx, view, since, until, "liquidations")
    body["liquidations"] = kept
    body["count"] = len(kept)
    body["totals"] = {"buy": dec(totals["buy"]), "sell": dec(totals["sell"])}
    return body


@attrs.define
class _State:
    """A market's last known derivatives values (samples carry only what changed)."""

    ts: int = 0
    mark_price: Decimal | None = None
    funding_rate: Decimal | None = None
    open_interest: Decimal | None = None
    open_interest_value: Decimal | None = None

    def update(self, row: DerivativesTick) -> None:
        self.ts = row.ts
        for name in ("mark_price", "funding_rate", "open_interest", "open_interest_value"):
            value = getattr(row, name)
            if value is not None:
                setattr(self, name, value)

    def base_oi(self, m: AssetMarket) -> Decimal | None:
        if self.open_interest is None:
            return None
        if m.inverse and not self.mark_price:
            return None  # an inverse market's open interest converts at a mark price
        return base_amount(self.mark_price or Decimal(1), self.open_interest, m.contract)

    def json(self, m: AssetMarket) -> dict[str, Any]:
        return {
            "ts": us_to_iso(self.ts),
            "mark_price": dec_or_none(self.mark_price),
            "funding_rate": dec_or_none(self.funding_rate),
            "open_interest": dec_or_none(self.base_oi(m)),
            "venue_open_interest": dec_or_none(self.open_interest),
            "open_interest_value": dec_or_none(self.open_interest_value),
        }


def _merged(states: dict[str, _State], markets: dict[str, AssetMarket], ts: int) -> dict[str, Any]:
    oi = ZERO
    value = ZERO
    weighted = ZERO
    weight = ZERO
    any_oi = any_value = False
    with exact():
        for key, state in states.items():
            base = state.base_oi(markets[key])
            if base is not None:
                oi += base
                any_oi = True
                if state.funding_rate is not None:
                    weighted += state.funding_rate * base
                    weight += base
            if state.open_interest_value is not None:
                value += state.open_interest_value
                any_value = True
    return {
        "ts": us_to_iso(ts),
        "mark_price": None,
        "index_price": None,
        "funding_rate": dec_or_none(ratio(weighted, weight)),
        "next_funding_time": None,
        "open_interest": dec(oi) if any_oi else None,
        "open_interest_value": dec(value) if any_value else None,
        "by_venue": {key: state.json(markets[key]) for key, state in sorted(states.items())},
    }


async def asset_derivatives(
    ctx: QueryContext,
    asset: str | None,
    markets: str | None = None,
    quotes: str | None = None,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """`/derivatives?asset=`: merged rows newest first (open interest summed in base units, funding the
    open-interest-weighted mean, each market's own values in `by_venue`) and `venues`, the end state."""
    view = asset_view(ctx, asset, markets, quotes)
    count = parse_limit(limit, DEFAULT_ROWS)
    check_range(since, until)
    contracts = {m.key: m for m in _contracts(view)}
    events: list[tuple[int, str, DerivativesTick]] = []
    for key, m in contracts.items():
        # Every sample of the range (oldest first below): a merged row needs each market's state then.
        samples = await fetch_samples(ctx, m.exchange, m.symbol, since, until, None)
        events.extend((row.ts, key, row) for row in samples)
    events.sort(key=lambda e: (e[0], e[1]))
    states: dict[str, _State] = {}
    rows: list[dict[str, Any]] = []
    for index, (ts, key, row) in enumerate(events):
        states.setdefault(key, _State()).update(row)
        if index + 1 < len(events) and events[index + 1][0] == ts:
            continue  # one merged row per instant
        rows.append(_merged(states, contracts, ts))
    body = _header(ctx, view, since, until, "derivatives")
    body["rows"] = rows[::-1][:count]
    body["venues"] = {key: state.json(contracts[key]) for key, state in sorted(states.items())}
    end = _merged(states, contracts, events[-1][0]) if events else None
    body["open_interest"] = None if end is None else end["open_interest"]
    body["funding_rate"] = None if end is None else end["funding_rate"]
    return body


# -- order-flow bars ---------------------------------------------------------------------------------------


def base_samples(m: AssetMarket, samples: list[DerivativesTick]) -> list[DerivativesTick]:
    """Samples (any order) with open interest in base units: inverse at the mark price last known then
    (carried forward; none known yet: left out), linear times the contract value, base as they are."""
    out: list[DerivativesTick] = []
    mark: Decimal | None = None
    for row in sorted(samples, key=lambda r: r.ts):
        if row.mark_price is not None:
            mark = row.mark_price
        oi = row.open_interest
        if oi is None or m.contract is None:
            out.append(row)
        elif not m.inverse or mark:
            converted = base_amount(mark or Decimal(1), oi, m.contract)
            out.append(msgspec.structs.replace(row, open_interest=converted))
    return out


async def annotate_asset_order_flow(
    ctx: QueryContext, view: AssetView, step_us: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Add `liquidations_buy`, `liquidations_sell` (base units) and `oi_change` (base units, summed over the
    markets with samples in the bar; null without) to every bar of an `/order-flow?asset=` answer."""
    bars: list[dict[str, Any]] = body.get("bars", [])
    starts = [_start_us(bar["start"]) for bar in bars]
    per_market: list[list[dict[str, str | None]]] = []
    if bars:
        low, high = min(starts), max(starts) + step_us
        for m in _contracts(view):
            liqs = [
                msgspec.structs.replace(liq, amount=base_amount(liq.price, liq.amount, m.contract))
                for liq in await fetch_liquidations(ctx, m.exchange, m.symbol, low, high, None)
            ]
            samples = base_samples(m, await fetch_samples(ctx, m.exchange, m.symbol, low, high, None))
            per_market.append(bar_fields(starts, step_us, _sorted(liqs), samples))
    with exact():
        for i, bar in enumerate(bars):
            buy = sell = ZERO
            change: Decimal | None = None
            for fields in per_market:
                buy += Decimal(fields[i]["liquidations_buy"] or 0)
                sell += Decimal(fields[i]["liquidations_sell"] or 0)
                value = fields[i]["oi_change"]
                if value is not None:
                    change = Decimal(value) if change is None else change + Decimal(value)
            bar["liquidations_buy"] = dec(buy)
            bar["liquidations_sell"] = dec(sell)
            bar["oi_change"] = dec_or_none(change)
    return body


def _sorted(liqs: list[Liquidation]) -> list[Liquidation]:
    return sorted(liqs, key=lambda r: (r.ts, r.id))
