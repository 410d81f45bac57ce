"""Queries of the SPEC §12 channels, shared by the HTTP routes and the MCP tools: ticker, derivatives
samples, liquidations, and the order-flow bar fields they add (`liquidations_buy`, `liquidations_sell`,
`oi_change`).

Live values come from the daemon's `LiveMarketData`; rows are stored ones merged with the ones still in
memory (samples and liquidations not yet written, or written a moment ago), de-duplicated by their keys, so
a row shows the same whether it was flushed or not. Decimals are the venue's strings (`format(d, "f")`),
JSON null where the venue gives nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import trio

from marketflow.analytics.decimal_fmt import dec, dec_or_none, exact
from marketflow.api.params import QueryError, check_range, parse_limit
from marketflow.api.queries import DEFAULT_TRADES_LIMIT, QueryContext, resolve_market
from marketflow.model import DerivativesTick, Liquidation, us_to_iso

__all__ = ["annotate_order_flow", "derivatives", "liquidations", "ticker"]

DEFAULT_ROWS = DEFAULT_TRADES_LIMIT


def _iso(us: int | None) -> str | None:
    return None if us is None else us_to_iso(us)


def ticker(
    ctx: QueryContext, exchange: str | None, symbol: str | None, market: str | None = None
) -> dict[str, Any]:
    """`/ticker/{exchange}/{symbol}`: the merged live ticker and derivatives (every field null, `ts`
    too, before anything arrived); 404 for a market that is not configured."""
    try:
        ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    except QueryError as exc:
        if exc.code.startswith("unknown"):
            exc.status = 404
        raise
    t, d = ctx.daemon.market.live.ticker(ex, sym)
    stamps = [x.ts for x in (t, d) if x is not None]
    return {
        "exchange": ex,
        "symbol": sym,
        "ts": _iso(max(stamps) if stamps else None),
        "bid": dec_or_none(t.bid if t else None),
        "bid_size": dec_or_none(t.bid_size if t else None),
        "ask": dec_or_none(t.ask if t else None),
        "ask_size": dec_or_none(t.ask_size if t else None),
        "last": dec_or_none(t.last if t else None),
        "volume_24h": dec_or_none(t.volume_24h if t else None),
        "mark_price": dec_or_none(d.mark_price if d else None),
        "index_price": dec_or_none(d.index_price if d else None),
        "funding_rate": dec_or_none(d.funding_rate if d else None),
        "next_funding_time": _iso(d.next_funding_time if d else None),
        "open_interest": dec_or_none(d.open_interest if d else None),
        "open_interest_value": dec_or_none(d.open_interest_value if d else None),
    }


def _in_range(ts: int, since: int | None, until: int | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


async def _stored(ctx: QueryContext, method: str, *args: Any) -> list[Any]:
    query = getattr(ctx.daemon.store, method, None)
    if query is None:
        return []
    try:
        rows: list[Any] = await query(*args)
    except trio.Cancelled:
        raise
    except Exception as exc:
        raise QueryError(
            "storage_unavailable", f"stored rows could not be read: {type(exc).__name__}: {exc}", None, 503
        ) from exc
    return rows


async def fetch_samples(
    ctx: QueryContext, ex: str, sym: str, since: int | None, until: int | None, limit: int | None
) -> list[DerivativesTick]:
    """Derivatives samples newest first: stored ones and the ones in memory, one per instant."""
    stored = await _stored(ctx, "query_derivatives", ex, sym, since, until, limit)
    by_ts = {row.ts: row for row in stored}
    for row in ctx.daemon.market.live.recent_samples(ex, sym):
        if _in_range(row.ts, since, until):
            by_ts[row.ts] = row  # memory holds the newest version of an instant
    rows = sorted(by_ts.values(), key=lambda r: r.ts, reverse=True)
    return rows if limit is None else rows[:limit]


async def fetch_liquidations(
    ctx: QueryContext, ex: str, sym: str, since: int | None, until: int | None, limit: int | None
) -> list[Liquidation]:
    """Liquidations newest first: stored and in memory, each identity once."""
    stored = await _stored(ctx, "query_liquidations", ex, sym, since, until, limit)
    by_id = {row.id: row for row in stored}
    for row in ctx.daemon.market.live.recent_liquidations(ex, sym):
        if _in_range(row.ts, since, until):
            by_id.setdefault(row.id, row)
    rows = sorted(by_id.values(), key=lambda r: (r.ts, r.id), reverse=True)
    return rows if limit is None else rows[:limit]


def sample_json(row: DerivativesTick) -> dict[str, Any]:
    return {
        "ts": us_to_iso(row.ts),
        "mark_price": dec_or_none(row.mark_price),
        "index_price": dec_or_none(row.index_price),
        "funding_rate": dec_or_none(row.funding_rate),
        "next_funding_time": _iso(row.next_funding_time),
        "open_interest": dec_or_none(row.open_interest),
        "open_interest_value": dec_or_none(row.open_interest_value),
    }


def liquidation_json(row: Liquidation) -> dict[str, Any]:
    return {
        "exchange": row.exchange,
        "symbol": row.symbol,
        "ts": us_to_iso(row.ts),
        "side": row.side,
        "price": dec(row.price),
        "amount": dec(row.amount),
    }


async def derivatives(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/derivatives`: `{"rows": [...]}`, newest first, `since <= ts < until`."""
    ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    count = parse_limit(limit, DEFAULT_ROWS)
    check_range(since, until)
    return {"rows": [sample_json(r) for r in await fetch_samples(ctx, ex, sym, since, until, count)]}


async def liquidations(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/liquidations`: `{"liquidations": [...], "count": N}`, newest first, `since <= ts < until`."""
    ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    count = parse_limit(limit, DEFAULT_ROWS)
    check_range(since, until)
    rows = await fetch_liquidations(ctx, ex, sym, since, until, count)
    return {"liquidations": [liquidation_json(r) for r in rows], "count": len(rows)}


# -- order-flow bars ------------------------------------------------------------------------------------


def _start_us(iso: str) -> int:
    parsed = datetime.fromisoformat(iso)
    return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond


def bar_fields(
    starts: Sequence[int],
    step_us: int,
    liquidations: Sequence[Liquidation],
    samples: Sequence[DerivativesTick],
) -> list[dict[str, str | None]]:
    """Per bar `[start, start + step)`: liquidation amounts by forced-order side, and open interest at the
    bar's last sample minus its first (null without a sample carrying open interest)."""
    index = {start: i for i, start in enumerate(starts)}
    buy = [Decimal(0)] * len(starts)
    sell = [Decimal(0)] * len(starts)
    first: list[tuple[int, Decimal] | None] = [None] * len(starts)
    last: list[tuple[int, Decimal] | None] = [None] * len(starts)
    with exact():
        for liq in liquidations:
            i = index.get(liq.ts - liq.ts % step_us)
            if i is None:
                continue
            if liq.side == "buy":
                buy[i] += liq.amount
            else:
                sell[i] += liq.amount
        for row in samples:
            oi = row.open_interest
            i = index.get(row.ts - row.ts % step_us)
            if i is None or oi is None:
                continue
            f, la = first[i], last[i]
            if f is None or row.ts < f[0]:
                first[i] = (row.ts, oi)
            if la is None or row.ts >= la[0]:
                last[i] = (row.ts, oi)
        out: list[dict[str, str | None]] = []
        for i in range(len(starts)):
            f, la = first[i], last[i]
            change = None if f is None or la is None else dec(la[1] - f[1])
            out.append(
                {"liquidations_buy": dec(buy[i]), "liquidations_sell": dec(sell[i]), "oi_change": change}
            )
    return out


async def annotate_order_flow(
    ctx: QueryContext, exchange: str, symbol: str, step_us: int, result: dict[str, Any]
) -> dict[str, Any]:
    """Add `liquidations_buy`, `liquidations_sell`, `oi_change` to every bar of an `/order-flow` answer."""
    bars: list[dict[str, Any]] = result.get("bars", [])
    if not bars:
        return result
    starts = [_start_us(bar["start"]) for bar in bars]
    since, until = min(starts), max(starts) + step_us
    liqs = await fetch_liquidations(ctx, exchange, symbol, since, until, None)
    samples = await fetch_samples(ctx, exchange, symbol, since, until, None)
    for bar, extra in zip(bars, bar_fields(starts, step_us, liqs, samples), strict=True):
        bar.update(extra)
    return result
