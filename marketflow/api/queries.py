"""The query layer shared by the HTTP routes and the MCP tools: daemon state → SPEC §6 JSON.

Every function takes a :class:`QueryContext` and parameters already converted to Python values (times in
µs since the epoch: convert text with :func:`parse_time`), checks them, and returns the JSON-ready dict
of the matching route, or raises :class:`QueryError` naming the bad parameter. Exchange and symbol are
taken as the user wrote them (normalized `BTC-USDT`, or the exchange's own `BTCUSDT` where that is
unambiguous, with `market` when it is not) and resolved against the configured feeds.

Trades come from the in-memory ring while it holds the range, and from storage for anything older, merged
and de-duplicated. Analytics come from the live engine when it holds the range, else from stored trades
(`marketflow/analytics/stored.py`: aggregated by PostgreSQL in SQL, streamed from SQLite), with the ring's
not yet stored trades merged in; a range is refused (`range_too_large`) by the bars or bins it would
produce, and every read of stored trades passes the :class:`~marketflow.api.limits.StorageQueryGate`: a few
at a time, each within `http.query_timeout_s` (503 with a retry delay otherwise).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from marketflow.analytics import NotLiveError
from marketflow.analytics.bars import normalize_bin
from marketflow.analytics.stored import (
    RangeTooLargeError,
    StoredRangeUnavailable,
    bar_span,
    range_bin,
    stored_candles,
    stored_order_flow,
    stored_volume_profile,
)
from marketflow.api.limits import StorageQueryGate, StorageQueryRefused

# Status queries read the same statistics as /metrics and live with it; they are part of this layer.
from marketflow.api.metrics import status, storage_stats, system_info
from marketflow.api.params import (
    MAX_DEPTH,
    MAX_LIMIT,
    QueryError,
    check_range,
    parse_bin,
    parse_depth,
    parse_interval_param,
    parse_limit,
    parse_optional_time,
    parse_symbol,
    parse_time,
)
from marketflow.exchanges import VENUES
from marketflow.model import Trade, now_us, us_to_iso

if TYPE_CHECKING:
    from marketflow.analytics import AnalyticsEngine
    from marketflow.api.ring import TradeRing
    from marketflow.daemon import Daemon

__all__ = [
    "MAX_DEPTH",
    "MAX_LIMIT",
    "QueryContext",
    "QueryError",
    "RateMeter",
    "candles",
    "gaps",
    "markets",
    "order_flow",
    "orderbook",
    "parse_bin",
    "parse_depth",
    "parse_limit",
    "parse_optional_time",
    "parse_time",
    "recent_trades",
    "resolve_market",
    "status",
    "storage_stats",
    "system_info",
    "trade_json",
    "volume_profile",
]

DEFAULT_TRADES_LIMIT = 1000
DEFAULT_CANDLES_LIMIT = 500
DEFAULT_ORDER_FLOW_BARS = 100
"""Bars of `/order-flow` when `since` is not given."""
DEFAULT_PROFILE_WINDOW_US = 3_600_000_000
"""`/volume-profile` covers the last hour when `since` is not given."""

T = TypeVar("T")

# What a symbol may look like in any venue's spelling (BTCUSDT, BTC-USDT-PERP, BTC-USDT-SWAP, BTC/USD).
_SYMBOL_TEXT = re.compile(r"[A-Za-z0-9]{1,20}([-/][A-Za-z0-9]{1,20}){0,3}")


class RateMeter:
    """Messages per second of counters sampled now and then (the HTTP server samples every second)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self._window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def sample(self, name: str, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        samples = self._samples.setdefault(name, deque())
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self._window_s:
            samples.popleft()

    def rate(self, name: str) -> float | None:
        """Per second over the window, or None before two samples at least 0.1 s apart."""
        samples = self._samples.get(name)
        if not samples or len(samples) < 2:
            return None
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        if t1 - t0 < 0.1:
            return None
        return max(0.0, (c1 - c0) / (t1 - t0))


@attrs.define
class QueryContext:
    """What queries read: the daemon, its trade ring and its analytics engine (either may be None)."""

    daemon: Daemon
    ring: TradeRing | None = None
    analytics: AnalyticsEngine | None = None
    rates: RateMeter = attrs.Factory(RateMeter)
    started_at: int = attrs.Factory(now_us)
    storage_gate: StorageQueryGate = attrs.Factory(
        lambda self: StorageQueryGate.of(self.daemon.config.http), takes_self=True
    )

    def sample_rates(self) -> None:
        """Take a sample of every feed's message counter (for msgs/s)."""
        for name, counters in self.daemon.feed_counters.items():
            self.rates.sample(name, counters.messages)


# -- markets ----------------------------------------------------------------------------------------------


def _configured(daemon: Daemon) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(exchange, market, normalized symbol, channels) of every configured feed's symbols."""
    return [
        (feed.exchange, feed.market, symbol, tuple(feed.channels))
        for feed in daemon.config.feeds
        for symbol in feed.symbols
    ]


def resolve_market(
    daemon: Daemon, exchange: str | None, symbol: str | None, market: str | None = None
) -> tuple[str, str]:
    """`(exchange, normalized symbol)` of a configured market, from the user's spelling of it."""
    configured = _configured(daemon)
    exchanges = sorted({c[0] for c in configured})
    if not exchange:
        raise QueryError(
            "missing_parameter", f"exchange is required (one of: {', '.join(exchanges)})", "exchange"
        )
    ex = exchange.strip().lower()
    if ex not in exchanges:
        raise QueryError(
            "unknown_exchange",
            f"exchange {exchange[:40]!r} is not configured (configured: {', '.join(exchanges) or 'none'})",
            "exchange",
        )
    on_exchange = [c for c in configured if c[0] == ex]
    if market:
        markets_here = sorted({c[1] for c in on_exchange})
        mk = market.strip().lower()
        if mk not in markets_here:
            raise QueryError(
                "unknown_market",
                f"market {market[:40]!r} is not configured on {ex} (configured: {', '.join(markets_here)})",
                "market",
            )
        on_exchange = [c for c in on_exchange if c[1] == mk]
    if not symbol:
        raise QueryError("missing_parameter", "symbol is required (e.g. BTC-USDT or BTC-USDT-PERP)", "symbol")
    text = parse_symbol(symbol)
    matches: list[tuple[str, str, str, tuple[str, ...]]] = []
    if _SYMBOL_TEXT.fullmatch(text):
        venue = VENUES[ex]
        # Normalized as configured, else the venue's native spelling of a configured symbol; with a
        # market, what the venue makes of the text there ("BTC-USDT" with market=linear is the perpetual).
        matches = [c for c in on_exchange if c[2] == text]
        if not matches:
            matches = [c for c in on_exchange if venue.native_symbol(c[1], c[2]) == text]
        if not matches and market:
            try:
                as_market = venue.normalize_symbol(market.strip().lower(), text)
            except ValueError:
                as_market = ""
            matches = [c for c in on_exchange if c[2] == as_market]
    if not matches:
        known = ", ".join(sorted({c[2] for c in on_exchange}))
        raise QueryError(
            "unknown_symbol",
            f"symbol {symbol[:40]!r} is not configured on {ex}{' ' + market if market else ''} "
            f"(configured: {known or 'none'})",
            "symbol",
        )
    if len({c[2] for c in matches}) > 1:
        choices = ", ".join(f"{c[2]} (market={c[1]})" for c in matches)
        raise QueryError(
            "ambiguous_symbol",
            f"{symbol[:40]!r} on {ex} could be {choices}: use the normalized symbol or add market=",
            "symbol",
        )
    return ex, matches[0][2]


def markets(ctx: QueryContext) -> dict[str, Any]:
    """`{"markets": [{exchange, market, symbol, native, channels, amount_unit, contract_value,
    contract_currency, inverse}]}` of every configured feed (SPEC §11: what `amount` counts)."""
    return {
        "markets": [
            {
                "exchange": exchange,
                "market": market,
                "symbol": symbol,
                "native": VENUES[exchange].native_symbol(market, symbol),
                "channels": list(channels),
                **_units(ctx, exchange, market, symbol),
            }
            for exchange, market, symbol, channels in _configured(ctx.daemon)
        ]
    }


def _units(ctx: QueryContext, exchange: str, market: str, symbol: str) -> dict[str, Any]:
    """What a trade's `amount` counts on a market; all null until its venue's metadata has loaded."""
    catalog = ctx.daemon.instruments
    instrument = catalog.instruments.get((exchange, symbol))
    if instrument is not None:
        value = instrument.contract_value
        return {
            "amount_unit": instrument.amount_unit,
            "contract_value": None if value is None else format(value, "f"),
            "contract_currency": instrument.contract_currency,
            "inverse": instrument.inverse,
        }
    if catalog.loaded(exchange, market):
        return {"amount_unit": "base", "contract_value": None, "contract_currency": None, "inverse": False}
    return {"amount_unit": None, "contract_value": None, "contract_currency": None, "inverse": None}


# -- trades -----------------------------------------------------------------------------------------------


def trade_json(trade: Trade) -> dict[str, Any]:
    """One trade as SPEC §6 JSON: decimals as the exchange's strings, times ISO 8601 UTC."""
    return {
        "exchange": trade.exchange,
        "symbol": trade.symbol,
        "id": trade.id,
        "price": format(trade.price, "f"),
        "amount": format(trade.amount, "f"),
        "side": trade.side,
        "ts": us_to_iso(trade.ts),
        "recv_ts": us_to_iso(trade.recv_ts),
    }


def _reads(ctx: QueryContext, exchange: str, symbol: str, since: int | None, until: int | None) -> Any:
    """The store, joined with the archive's files when `[since, until)` touches an archived day."""
    archive = getattr(ctx.daemon, "archive", None)
    if archive is None:
        return ctx.daemon.store
    from marketflow.archive.reader import reads_for  # pyarrow/DuckDB load only where there is an archive

    return reads_for(ctx.daemon.store, archive, exchange, symbol, since, until)


async def _gated(ctx: QueryContext, compute: Callable[[], Awaitable[T]]) -> T:
    """`compute()` through the storage query gate: a 503 with a retry delay when busy or too slow."""
    try:
        return await ctx.storage_gate.run(compute)
    except StorageQueryRefused as exc:
        raise QueryError(exc.code, exc.detail, None, 503, retry_after_s=exc.retry_after_s) from None


async def _stored_trades(
    ctx: QueryContext, exchange: str, symbol: str, since: int | None, until: int | None, limit: int | None
) -> list[Trade]:
    query = getattr(_reads(ctx, exchange, symbol, since, until), "query_trades", None)
    if query is None:
        raise QueryError("storage_unavailable", "this storage engine cannot be queried for trades", None, 503)

    async def read() -> list[Trade]:
        trades: list[Trade] = await query(exchange, symbol, since, until, limit)
        return trades

    try:
        result = await _gated(ctx, read)
    except (trio.Cancelled, QueryError):
        raise
    except Exception as exc:
        raise QueryError(
            "storage_unavailable", f"stored trades could not be read: {type(exc).__name__}: {exc}", None, 503
        ) from exc
    return result


async def fetch_trades(
    ctx: QueryContext, exchange: str, symbol: str, since: int | None, until: int | None, limit: int
) -> list[Trade]:
    """Newest first: the ring for what it holds completely, storage for what is older, merged."""
    ring = ctx.ring
    if ring is None:
        return await _stored_trades(ctx, exchange, symbol, since, until, limit)
    live = ring.recent(exchange, symbol, since, until, limit)
    complete_from = ring.complete_from(exchange, symbol)
    if len(live) >= limit or (complete_from is not None and since is not None and since >= complete_from):
        return live
    boundary = (
        complete_from if until is None or (complete_from is not None and complete_from < until) else until
    )
    if since is not None and boundary is not None and boundary <= since:
        return live
    stored = await _stored_trades(ctx, exchange, symbol, since, boundary, limit)
    seen = {t.id for t in live}
    merged = live + [t for t in stored if t.id not in seen]
    merged.sort(key=lambda t: (t.ts, t.id), reverse=True)
    return merged[:limit]


async def recent_trades(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/collectors/trades`: `{"trades": [...], "count": N}`, newest first, `since <= ts < until`."""
    ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    count = parse_limit(limit, DEFAULT_TRADES_LIMIT)
    check_range(since, until)
    trades = await fetch_trades(ctx, ex, sym, since, until, count)
    return {"trades": [trade_json(t) for t in trades], "count": len(trades)}


# -- books and gaps ---------------------------------------------------------------------------------------


def orderbook(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    depth: int | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/book/{exchange}/{symbol}`: levels as `[price, amount]` strings; empty unless `synced`."""
    levels = parse_depth(depth)
    try:
        ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    except QueryError as exc:
        if exc.code.startswith("unknown"):
            exc.status = 404
        raise
    view = ctx.daemon.books.view(ex, sym, levels)
    if view is None:
        raise QueryError(
            "not_found",
            f'no order book is kept for {ex} {sym}: add "book" to the channels of its feed',
            "symbol",
            404,
        )
    return {
        "exchange": view.exchange,
        "symbol": view.symbol,
        "bids": [[format(p, "f"), format(q, "f")] for p, q in view.bids],
        "asks": [[format(p, "f"), format(q, "f")] for p, q in view.asks],
        "ts": None if view.ts is None else us_to_iso(view.ts),
        "status": view.status,
    }


def gaps(ctx: QueryContext, exchange: str | None = None, symbol: str | None = None) -> dict[str, Any]:
    """`/gaps`: recorded gaps and recoveries, newest first, optionally of one exchange and/or symbol."""
    ex: str | None = None
    sym: str | None = None
    if symbol:
        if exchange:
            ex, sym = resolve_market(ctx.daemon, exchange, symbol)
        else:
            sym = parse_symbol(symbol)
            if sym not in {c[2] for c in _configured(ctx.daemon)}:
                raise QueryError(
                    "unknown_symbol",
                    f"symbol {symbol[:40]!r} is not configured; without exchange= write it normalized",
                    "symbol",
                )
    elif exchange:
        ex = exchange.strip().lower()
        if ex not in {c[0] for c in _configured(ctx.daemon)}:
            raise QueryError("unknown_exchange", f"exchange {exchange[:40]!r} is not configured", "exchange")
    return {
        "gaps": [
            {
                "exchange": r.exchange,
                "symbol": r.symbol,
                "channel": r.channel,
                "start": us_to_iso(r.start),
                "end": None if r.end is None else us_to_iso(r.end),
                "open": r.end is None,
                "reason": r.reason,
                "recovered": r.recovered,
            }
            for r in ctx.daemon.ledger.query(ex, sym)
        ]
    }


# -- analytics --------------------------------------------------------------------------------------------


def _floor(ts: int, step: int) -> int:
    return ts - ts % step


def _live(ctx: QueryContext, exchange: str, symbol: str, interval: str, since: int) -> AnalyticsEngine | None:
    """The engine if it holds `[since, ...)` of the market completely, else None (compute from storage)."""
    engine = ctx.analytics
    if engine is None:
        return None
    try:
        live_since = engine.live_since(exchange, symbol, interval)
    except (NotLiveError, ValueError):
        return None
    return engine if live_since is not None and since >= live_since else None


async def _from_storage(
    ctx: QueryContext, compute: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """A stored-range computation through the storage query gate, its failures as query errors."""
    try:
        return await _gated(ctx, compute)
    except RangeTooLargeError as exc:
        raise QueryError("range_too_large", exc.detail, exc.param) from None
    except StoredRangeUnavailable as exc:
        raise QueryError("storage_unavailable", str(exc), None, 503) from None
    except (trio.Cancelled, QueryError):
        raise
    except Exception as exc:
        raise QueryError(
            "storage_unavailable", f"stored trades could not be read: {type(exc).__name__}: {exc}", None, 503
        ) from exc


async def _footprint_bin(
    ctx: QueryContext, exchange: str, symbol: str, bin: Decimal | None, since: int, until: int | None
) -> Decimal | None:
    """The requested bin, else the configured one, else the default bin of the range's first trade."""
    if bin is not None:
        return bin
    configured = ctx.daemon.config.analytics.bin_size.get(symbol)
    if configured is not None:
        return normalize_bin(configured)
    return await range_bin(
        _reads(ctx, exchange, symbol, since, until), ctx.ring, exchange, symbol, since, until
    )


async def candles(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    interval: str | None = "1m",
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/candles`: `{"candles": [...]}` of bars starting in `[since, until)`, oldest first.

    Without `since`, the last `limit` (default 500) candles up to `until` (default now).
    """
    ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    text, step = parse_interval_param(interval)
    count = parse_limit(limit, DEFAULT_CANDLES_LIMIT)
    check_range(since, until)
    if since is None:
        end = now_us() if until is None else until - 1
        since = _floor(end, step) - (count - 1) * step
    engine = _live(ctx, ex, sym, text, since)
    if engine is not None:
        try:
            return engine.candles(ex, sym, text, since, until, count)
        except NotLiveError:
            pass
    store, ring, start = _reads(ctx, ex, sym, since, None if until is None else until + step), ctx.ring, since
    return await _from_storage(ctx, lambda: stored_candles(store, ring, ex, sym, step, start, until, count))


async def order_flow(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    interval: str | None = "1m",
    since: int | None = None,
    until: int | None = None,
    footprint: bool = False,
    bin: Decimal | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/order-flow`: `{"bars": [...]}`; without `since`, the last 100 bars up to `until` (default now)."""
    ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    text, step = parse_interval_param(interval)
    size = parse_bin(bin)
    check_range(since, until)
    if since is None:
        end = now_us() if until is None else until - 1
        since = _floor(end, step) - (DEFAULT_ORDER_FLOW_BARS - 1) * step
    from marketflow.api.market_queries import annotate_order_flow  # it builds on this module

    engine = _live(ctx, ex, sym, text, since)
    if engine is not None:
        try:
            live = engine.order_flow(ex, sym, text, since, until, footprint, size)
            return await annotate_order_flow(ctx, ex, sym, step, live)
        except NotLiveError:
            pass

    start = since

    async def compute() -> dict[str, Any]:
        fp_bin = None
        if footprint:  # no trade in the range leaves no bin, and no bar to draw a footprint of
            fp_bin = await _footprint_bin(ctx, ex, sym, size, *bar_span(start, until, step)) or Decimal(1)
        return await stored_order_flow(
            _reads(ctx, ex, sym, start, None if until is None else until + step),
            ctx.ring,
            ex,
            sym,
            step,
            start,
            until,
            large_trade_notional=ctx.daemon.config.analytics.large_trade_notional,
            contract=ctx.daemon.instruments.contracts.get((ex, sym)),
            footprint_bin=fp_bin,
        )

    return await annotate_order_flow(ctx, ex, sym, step, await _from_storage(ctx, compute))


async def volume_profile(
    ctx: QueryContext,
    exchange: str | None,
    symbol: str | None,
    since: int | None = None,
    until: int | None = None,
    bin: Decimal | None = None,
    market: str | None = None,
) -> dict[str, Any]:
    """`/volume-profile` over trades with `since <= ts < until`; without `since`, the last hour."""
    ex, sym = resolve_market(ctx.daemon, exchange, symbol, market)
    size = parse_bin(bin)
    check_range(since, until)
    if since is None:
        since = (now_us() if until is None else until) - DEFAULT_PROFILE_WINDOW_US
    engine = ctx.analytics
    if engine is not None:
        intervals = ctx.daemon.config.analytics.candle_intervals
        live = [_live(ctx, ex, sym, iv, since) for iv in intervals]
        if intervals and all(e is not None for e in live):
            try:
                return engine.volume_profile(ex, sym, since, until, size)
            except NotLiveError:
                pass
    start = since

    async def compute() -> dict[str, Any]:
        profile_bin = await _footprint_bin(ctx, ex, sym, size, start, until)
        return await stored_volume_profile(
            _reads(ctx, ex, sym, start, until),
            ctx.ring,
            ex,
            sym,
            start,
            until,
            bin=profile_bin,
            value_area=ctx.daemon.config.analytics.value_area,
        )

    return await _from_storage(ctx, compute)
