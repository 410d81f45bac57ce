"""Queries over one asset on every configured market (SPEC §15): `asset=` on `/candles`, `/order-flow`,
`/volume-profile` and their MCP tools.

The view holds every configured market whose normalized symbol has `asset` as its base (`BTC-USDT`,
`BTC-USDT-PERP`, `BTC-USD-20250627`), narrowed by `markets=spot|perp|all` (perp: every contract market,
perpetual or dated) and `quotes=` (default USD, USDC and USDT, counted as one dollar). Volumes are in base
units (`analytics/assets.py` says how each market converts). Each market is read where it is complete:
base-unit and linear markets from the live engine when it holds the range, else from storage (with the
trade ring's not yet stored trades); inverse markets trade by trade from storage and the ring. Every
response names its markets, conversions, the markets left out (contract metadata not loaded yet) and the
trade gaps the ledger holds for the range, so a venue that was down is marked, never silently missing.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import attrs

from marketflow.analytics import NotLiveError
from marketflow.analytics.assets import (
    DOLLARS,
    AssetMarket,
    ConvertedFold,
    asset_order_flow_json,
    merge_bars,
    scale_bar,
    scale_cells,
)
from marketflow.analytics.bars import Bar, bin_floor
from marketflow.analytics.candles import candle_json
from marketflow.analytics.decimal_fmt import ZERO, exact
from marketflow.analytics.stored import (
    MAX_BARS,
    MAX_PROFILE_BINS,
    RangeTooLargeError,
    StoredRangeUnavailable,
    TradeScan,
    bar_span,
    range_bin,
    stored_bars,
    stored_profile_cells,
    unstored_trades,
)
from marketflow.analytics.volume_profile import VolumeProfile, profile_json, volume_profile
from marketflow.api.params import (
    QueryError,
    check_range,
    parse_bin,
    parse_interval_param,
    parse_limit,
    refuse_non_ascii,
)
from marketflow.api.queries import (
    DEFAULT_CANDLES_LIMIT,
    DEFAULT_ORDER_FLOW_BARS,
    DEFAULT_PROFILE_WINDOW_US,
    QueryContext,
    _from_storage,
    _reads,
)
from marketflow.exchanges import VENUES
from marketflow.model import now_us, us_to_iso

__all__ = [
    "AssetView",
    "asset_candles",
    "asset_order_flow",
    "asset_view",
    "asset_volume_profile",
    "view_order_flow",
    "view_volume_profile",
    "wants_asset",
]

MARKET_KINDS = ("spot", "perp", "all")
_CODE = re.compile(r"[A-Z0-9]{1,20}")


@attrs.frozen
class AssetView:
    """The markets of one asset a query reads, and what the response says about them."""

    asset: str
    markets: tuple[AssetMarket, ...]
    quotes: tuple[str, ...]
    excluded: tuple[dict[str, str], ...]

    def header(
        self, ctx: QueryContext, since: int, until: int | None, channels: tuple[str, ...] = ("trades",)
    ) -> dict[str, Any]:
        """The fields every asset response starts with (`gaps`: those of `channels`)."""
        head: dict[str, Any] = {
            "asset": self.asset,
            "units": f"base units of {self.asset}",
            "quotes": list(self.quotes),
        }
        dollars = [q for q in self.quotes if q in DOLLARS]
        if len(dollars) > 1:
            head["quote_note"] = f"{', '.join(dollars)} are treated as one dollar"
        head["markets"] = [
            {
                "market": m.key,
                "exchange": m.exchange,
                "symbol": m.symbol,
                "quote": m.quote,
                "kind": "perp" if m.derivative else "spot",
                "amount_unit": "base" if m.contract is None else "contracts",
                "inverse": m.inverse,
            }
            for m in self.markets
        ]
        head["conversions"] = [c for m in self.markets if (c := m.conversion()) is not None]
        head["excluded"] = list(self.excluded)
        head["gaps"] = trade_gaps(ctx, self.markets, since, until, channels)
        return head


def wants_asset(asset: str | None, exchange: str | None, symbol: str | None) -> bool:
    """True when a query names an asset; 400 when it names an exchange or symbol too."""
    if asset is None:
        return False
    for param, value in (("exchange", exchange), ("symbol", symbol)):
        if value:
            raise QueryError(
                "conflicting_parameters",
                f"asset= replaces exchange= and symbol=: give asset alone or exchange with symbol, "
                f"not {param} with asset",
                param,
            )
    return True


def _parse_markets(markets: str | None) -> str:
    kind = "all" if markets is None or markets == "" else markets.strip().lower()
    if kind not in MARKET_KINDS:
        raise QueryError(
            "bad_markets", f"markets must be spot, perp or all, got {str(markets)[:40]!r}", "markets"
        )
    return kind


def _parse_quotes(quotes: str | None) -> tuple[str, ...]:
    if quotes is None or quotes == "":
        return DOLLARS
    refuse_non_ascii(quotes, "quotes", "bad_quotes")
    codes = tuple(sorted({q.strip().upper() for q in quotes.split(",")}))
    if not codes or not all(_CODE.fullmatch(q) for q in codes):
        raise QueryError(
            "bad_quotes",
            f"quotes must be a comma-separated list of currency codes such as USD,USDT,USDC, got "
            f"{quotes[:60]!r}",
            "quotes",
        )
    if len(codes) > 1 and not set(codes) <= set(DOLLARS):
        raise QueryError(
            "bad_quotes",
            f"quotes may combine only {', '.join(DOLLARS)} (one dollar); any other quote stands alone, got "
            f"{quotes[:60]!r}",
            "quotes",
        )
    return codes


def asset_view(ctx: QueryContext, asset: str | None, markets: str | None, quotes: str | None) -> AssetView:
    """The configured markets of `asset`, narrowed by `markets` and `quotes`; 400 naming a bad one."""
    kind = _parse_markets(markets)
    wanted = _parse_quotes(quotes)
    daemon = ctx.daemon
    every: list[AssetMarket] = []
    for feed in daemon.config.feeds:
        venue = VENUES.get(feed.exchange)
        perpetual = (
            venue is not None and feed.market in venue.markets and venue.markets[feed.market].perpetual
        )
        for symbol in feed.symbols:
            parts = symbol.split("-")
            if len(parts) < 2:
                continue
            contract = daemon.instruments.contracts.get((feed.exchange, symbol))
            every.append(
                AssetMarket(
                    feed.exchange,
                    feed.market,
                    symbol,
                    parts[0],
                    parts[1],
                    perpetual or len(parts) > 2,
                    contract,
                )
            )
    refuse_non_ascii(asset or "", "asset", "bad_asset")
    text = (asset or "").strip().upper()
    known = sorted({m.base for m in every})
    if not text or not _CODE.fullmatch(text) or text not in known:
        raise QueryError(
            "unknown_asset" if asset else "missing_parameter",
            f"asset {str(asset or '')[:40]!r} is not the base of any configured market (configured: "
            f"{', '.join(known) or 'none'})",
            "asset",
        )
    chosen = [
        m
        for m in every
        if m.base == text and m.quote in wanted and (kind == "all" or (kind == "perp") == m.derivative)
    ]
    if not chosen:
        raise QueryError(
            "no_markets",
            f"no configured market of {text} matches markets={kind} quotes={','.join(wanted)}",
            "quotes" if kind == "all" else "markets",
        )
    view: list[AssetMarket] = []
    excluded: list[dict[str, str]] = []
    for m in sorted(chosen, key=lambda m: m.key):
        if m.derivative and m.contract is None and not daemon.instruments.loaded(m.exchange, m.market):
            excluded.append(
                {"market": m.key, "reason": "its contract metadata is not loaded yet: units unknown"}
            )
        else:
            view.append(m)
    return AssetView(text, tuple(view), wanted, tuple(excluded))


def trade_gaps(
    ctx: QueryContext,
    markets: tuple[AssetMarket, ...],
    since: int,
    until: int | None,
    channels: tuple[str, ...] = ("trades",),
) -> list[dict[str, Any]]:
    """The ledger's gaps of `channels` of the markets that overlap `[since, until)`, oldest first."""
    out: list[tuple[int, dict[str, Any]]] = []
    for m in markets:
        for r in ctx.daemon.ledger.query(m.exchange, m.symbol):
            if r.channel not in channels or (until is not None and r.start >= until):
                continue
            if r.end is not None and r.end <= since:
                continue
            out.append(
                (
                    r.start,
                    {
                        "venue": m.key,
                        "channel": r.channel,
                        "start": us_to_iso(r.start),
                        "end": None if r.end is None else us_to_iso(r.end),
                        "open": r.end is None,
                        "reason": r.reason,
                        "recovered": r.recovered,
                    },
                )
            )
    out.sort(key=lambda item: (item[0], item[1]["venue"]))
    return [item for _, item in out]


# -- per-market bars and cells in base units ------------------------------------------------------------


def _live_bars(
    ctx: QueryContext, m: AssetMarket, interval: str, since: int, until: int | None
) -> list[Bar] | None:
    engine = ctx.analytics
    if engine is None:
        return None
    try:
        live_since = engine.live_since(m.exchange, m.symbol, interval)
        if live_since is None or since < live_since:
            return None
        return engine.bars(m.exchange, m.symbol, interval, since, until)
    except (NotLiveError, ValueError):
        return None


async def _inverse_fold(
    ctx: QueryContext, m: AssetMarket, fold: ConvertedFold, low: int, high: int | None
) -> None:
    """Every trade of an inverse market with `low <= ts < high` (stored, then the ring's unstored) into
    `fold`."""
    store = _reads(ctx, m.exchange, m.symbol, low, high)
    if isinstance(store, TradeScan):
        await store.scan_trades(m.exchange, m.symbol, low, high, fold.consume)
    else:
        query = getattr(store, "query_trades", None)
        if query is None or not hasattr(store, "trade_ids"):
            raise StoredRangeUnavailable(
                f"the {getattr(store, 'engine_name', 'configured')} store cannot read ranges of trades"
            )
        fold.add_trades(await query(m.exchange, m.symbol, low, high, None))
    fold.add_trades(await unstored_trades(store, ctx.ring, m.exchange, m.symbol, low, high))


async def market_bars(
    ctx: QueryContext,
    m: AssetMarket,
    interval: str,
    step: int,
    since: int,
    until: int | None,
    large: Decimal | None,
) -> tuple[list[Bar], str]:
    """The market's bars starting in `[since, until)` in base units, and where they came from."""
    if m.inverse:
        assert m.contract is not None
        low, high = bar_span(since, until, step)
        if high is not None and high <= low:
            return [], "storage"
        fold = ConvertedFold(m.contract, step, large=large)
        await _inverse_fold(ctx, m, fold, low, high)
        if len(fold.bars) > MAX_BARS:
            raise RangeTooLargeError(
                f"the range holds more than {MAX_BARS} bars of {m.key}; narrow since/until or use a longer "
                "interval",
                "since",
            )
        return fold.sorted_bars(), "storage"
    bars = _live_bars(ctx, m, interval, since, until)
    source = "live"
    if bars is None:
        source = "storage"
        low, high = bar_span(since, until, step)
        bars = await stored_bars(
            _reads(ctx, m.exchange, m.symbol, low, high),
            ctx.ring,
            m.exchange,
            m.symbol,
            since,
            until,
            step,
            large=large,
            contract=m.contract,
        )
    if m.contract is not None:
        bars = [scale_bar(bar, m.contract.value) for bar in bars]
    return bars, source


async def market_cells(
    ctx: QueryContext, m: AssetMarket, since: int, until: int | None, size: Decimal
) -> dict[Decimal, list[Decimal]]:
    """The market's volume per price bin of `size` (→ [sell-taker, buy-taker]) in base units."""
    if m.inverse:
        assert m.contract is not None
        fold = ConvertedFold(m.contract, None, size=size)
        await _inverse_fold(ctx, m, fold, since, until)
        return fold.cells
    store = _reads(ctx, m.exchange, m.symbol, since, until)
    cells = await stored_profile_cells(store, ctx.ring, m.exchange, m.symbol, since, until, size)
    return cells if m.contract is None else scale_cells(cells, m.contract.value)


# -- the queries --------------------------------------------------------------------------------


def _default_since(since: int | None, until: int | None, step: int, count: int) -> int:
    if since is not None:
        return since
    end = now_us() if until is None else until - 1
    return end - end % step - (count - 1) * step


async def asset_order_flow(
    ctx: QueryContext,
    asset: str | None,
    markets: str | None = None,
    quotes: str | None = None,
    interval: str | None = "1m",
    since: int | None = None,
    until: int | None = None,
) -> dict[str, Any]:
    """`/order-flow?asset=`: bars with every market's totals (cvd across them) and `by_venue`."""
    view = asset_view(ctx, asset, markets, quotes)
    text, step = parse_interval_param(interval)
    check_range(since, until)
    start = _default_since(since, until, step, DEFAULT_ORDER_FLOW_BARS)

    return await _from_storage(ctx, lambda: view_order_flow(ctx, view, text, step, start, until))


async def view_order_flow(
    ctx: QueryContext, view: AssetView, interval: str, step: int, since: int, until: int | None
) -> dict[str, Any]:
    """The `/order-flow?asset=` answer for the markets of `view` (bars starting in `[since, until)`)."""
    large = ctx.daemon.config.analytics.large_trade_notional
    per_market: dict[str, list[Bar]] = {}
    sources: dict[str, str] = {}
    for m in view.markets:
        per_market[m.key], sources[m.key] = await market_bars(ctx, m, interval, step, since, until, large)
    body = view.header(ctx, since, until)
    body["interval"] = interval
    body["sources"] = sources
    body.update(asset_order_flow_json(per_market))
    from marketflow.api.asset_market_queries import annotate_asset_order_flow  # it builds on this module

    return await annotate_asset_order_flow(ctx, view, step, body)


async def asset_candles(
    ctx: QueryContext,
    asset: str | None,
    markets: str | None = None,
    quotes: str | None = None,
    interval: str | None = "1m",
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """`/candles?asset=`: `candles` merges every market (open/close the first/last trade by time across
    them, volumes summed, vwap over all); `by_venue` holds each market's own candles side by side (prices
    its own). Volumes in base units."""
    view = asset_view(ctx, asset, markets, quotes)
    text, step = parse_interval_param(interval)
    count = parse_limit(limit, DEFAULT_CANDLES_LIMIT)
    check_range(since, until)
    start = _default_since(since, until, step, count)

    async def compute() -> dict[str, Any]:
        per_market: dict[str, list[Bar]] = {}
        sources: dict[str, str] = {}
        for m in view.markets:
            per_market[m.key], sources[m.key] = await market_bars(ctx, m, text, step, start, until, None)
        merged = merge_bars(per_market)[:count]
        last = merged[-1].start if len(merged) == count else None
        body = view.header(ctx, start, until)
        body["interval"] = text
        body["sources"] = sources
        body["candles"] = [candle_json(bar) for bar in merged]
        body["by_venue"] = {
            key: [candle_json(bar) for bar in bars if last is None or bar.start <= last]
            for key, bars in per_market.items()
        }
        return body

    return await _from_storage(ctx, compute)


async def asset_volume_profile(
    ctx: QueryContext,
    asset: str | None,
    markets: str | None = None,
    quotes: str | None = None,
    since: int | None = None,
    until: int | None = None,
    bin: Decimal | str | None = None,
) -> dict[str, Any]:
    """`/volume-profile?asset=`: every market's trades with `since <= ts < until` on one price grid
    (`bin`, default: the largest default bin of the markets' first trades)."""
    view = asset_view(ctx, asset, markets, quotes)
    size = parse_bin(bin)
    check_range(since, until)
    start = (now_us() if until is None else until) - DEFAULT_PROFILE_WINDOW_US if since is None else since

    return await _from_storage(ctx, lambda: view_volume_profile(ctx, view, start, until, size))


async def view_volume_profile(
    ctx: QueryContext, view: AssetView, since: int, until: int | None, size: Decimal | None
) -> dict[str, Any]:
    """The `/volume-profile?asset=` answer for the markets of `view` (trades with `since <= ts < until`)."""
    grid = size
    if grid is None:
        bins = [
            await range_bin(
                _reads(ctx, m.exchange, m.symbol, since, until), ctx.ring, m.exchange, m.symbol, since, until
            )
            for m in view.markets
        ]
        found = [b for b in bins if b is not None]
        grid = max(found) if found else None
    body = view.header(ctx, since, until)
    if grid is None:
        body.update(profile_json(VolumeProfile(None, None, None, ZERO, ZERO, ())))
        return body
    cells: dict[Decimal, list[Decimal]] = {}
    with exact():
        for m in view.markets:
            for price, (bid, ask) in (await market_cells(ctx, m, since, until, grid)).items():
                key = bin_floor(price, grid)  # already on the grid; keeps one spelling per bin
                cell = cells.get(key)
                if cell is None:
                    cells[key] = [bid, ask]
                else:
                    cell[0] += bid
                    cell[1] += ask
    if len(cells) > MAX_PROFILE_BINS:
        raise RangeTooLargeError(
            f"the volume profile would hold more than {MAX_PROFILE_BINS} bins; use a larger bin", "bin"
        )
    body["bin"] = format(grid, "f")
    body.update(profile_json(volume_profile(cells, grid, ctx.daemon.config.analytics.value_area)))
    return body
