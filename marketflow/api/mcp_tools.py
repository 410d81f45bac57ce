"""The MCP tools and resources: each tool calls the same :mod:`~marketflow.api.queries` function as the
matching HTTP route, so its `structuredContent` is that route's JSON; its `outputSchema` is generated from
the route's documented response type (:func:`object_schema`). Tools register into `TOOLS` with `@tool`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar, get_type_hints

import attrs
import msgspec

from marketflow.api import asset_queries, queries
from marketflow.api.mcp_args import (
    BookArgs,
    CandlesArgs,
    GapsArgs,
    NoArgs,
    OrderFlowArgs,
    ProfileArgs,
    StatusArgs,
    SystemInfoOut,
    TradesArgs,
)
from marketflow.api.queries import QueryContext, parse_optional_time
from marketflow.api.routes import (
    BookOut,
    CandlesOut,
    GapsOut,
    MarketsOut,
    OrderFlowOut,
    PongOut,
    ProfileOut,
    StatusOut,
    TradesOut,
)
from marketflow.exchanges import VENUES

INSTRUCTIONS = (
    f"marketflow collects exact crypto market data live from {' and '.join(VENUES)} (trades, order books, "
    "tickers, derivatives data and liquidations) and computes order-flow analytics from it. Call "
    "list_markets first: every other market tool takes an exchange and a symbol from that list "
    "(normalized BTC-USDT / BTC-USDT-PERP, or the native BTCUSDT with market= when ambiguous); "
    "get_candles, get_order_flow and get_volume_profile take asset= (BTC) instead, for one asset across "
    "every venue. Prices and amounts are exact decimal strings; times are ISO 8601 UTC. "
    "Time arguments take ISO 8601 (2026-08-09T12:00:00Z; no zone means UTC) or epoch milliseconds; "
    "ranges are since <= ts < until."
)

# -- tools ------------------------------------------------------------------------------------------------


@attrs.frozen
class ToolSpec:
    """One tool: the query it runs, its argument and result types, and the one-line summary of a result."""

    name: str
    title: str
    description: str
    args: type[msgspec.Struct]
    output: type[msgspec.Struct]
    run: Callable[[QueryContext, Any], Awaitable[dict[str, Any]]]
    summarize: Callable[[dict[str, Any], Any], str]
    params: dict[str, str]
    """Query parameter name → argument name, where they differ."""


TOOLS: dict[str, ToolSpec] = {}
"""Every tool by name, in the order `tools/list` shows them."""

_MARKET_ARGS = (
    "Pass exchange and symbol as list_markets shows them. Decimals are exact strings; times ISO 8601 UTC."
)

F = TypeVar("F", bound=Callable[..., Awaitable[dict[str, Any]]])


def tool(
    title: str,
    output: type[msgspec.Struct],
    summarize: Callable[[dict[str, Any], Any], str],
    params: dict[str, str] | None = None,
) -> Callable[[F], F]:
    """Register `async def <name>(ctx, args: <ArgsStruct>)` as a tool; its docstring is the description."""

    def register(func: F) -> F:
        description = (
            inspect.cleandoc(func.__doc__ or "").replace("\n", " ").replace("{MARKET}", _MARKET_ARGS)
        )
        args = get_type_hints(func)["args"]
        TOOLS[func.__name__] = ToolSpec(
            func.__name__, title, description, args, output, func, summarize, params or {}
        )
        return func

    return register


def _times(args: Any) -> tuple[int | None, int | None]:
    return parse_optional_time(args.since, "since"), parse_optional_time(args.until, "until")


def _bin(value: str | int | float | None) -> Decimal | None:
    return queries.parse_bin(None if value is None else str(value))


def _sum(values: Iterable[str]) -> Decimal:
    return sum((Decimal(v) for v in values), Decimal(0))


@tool("Ping", PongOut, lambda r, a: "pong")
async def ping(ctx: QueryContext, args: NoArgs) -> dict[str, Any]:
    """Check that the marketflow daemon answers. Returns {pong: true}."""
    return {"pong": True}


def _sum_info(r: dict[str, Any], a: NoArgs) -> str:
    return (
        f"{r['name']} {r['version']}, {r['health']}, up {r['uptime_s']:.0f} s, {r['markets']} markets on "
        f"feeds {', '.join(r['feeds']) or 'none'}, storage {r['storage']}."
    )


@tool("System information", SystemInfoOut, _sum_info)
async def system_info(ctx: QueryContext, args: NoArgs) -> dict[str, Any]:
    """What this marketflow daemon is: version, uptime, health (healthy|degraded|unhealthy), storage, the
    feeds it runs, how many markets it collects, and analytics settings (candle intervals kept live,
    value-area fraction, large-trade notional)."""
    return queries.system_info(ctx)


def _sum_status(r: dict[str, Any], a: StatusArgs) -> str:
    actors = r["actors"]
    not_running = [f"{x['name']} ({x['state']})" for x in actors if x["state"] != "running"]
    tail = f"; not running: {', '.join(not_running)}" if not_running else ", all running"
    return f"Daemon {r['status']}; {len(actors)} actors{tail}."


@tool("Collector status", StatusOut, _sum_status, {"name": "actor"})
async def get_status(ctx: QueryContext, args: StatusArgs) -> dict[str, Any]:
    """Health of the daemon and of every actor (feed connections such as bybit-spot, storage, books,
    analytics): state, restarts, circuit breaker, last error; for feeds also messages/s, age of the last
    message and subscriptions; queue depths. Use it to judge whether data is fresh and complete."""
    if args.actor is None:
        return queries.status(ctx)
    return {"status": ctx.daemon.health().status, "actors": [queries.status(ctx, args.actor)]}


def _sum_markets(r: dict[str, Any], a: NoArgs) -> str:
    names = ", ".join(f"{m['exchange']} {m['market']} {m['symbol']}" for m in r["markets"])
    return f"{len(r['markets'])} markets: {names or 'none'}."


@tool("List markets", MarketsOut, _sum_markets)
async def list_markets(ctx: QueryContext, args: NoArgs) -> dict[str, Any]:
    """Every market the daemon collects: exchange, market (spot, linear, usdm), normalized symbol
    (BTC-USDT, BTC-USDT-PERP), the exchange's native symbol and the channels kept (trades, book, ticker,
    derivatives, liquidations). Call this first: the other market tools take exchange and symbol from
    here."""
    return queries.markets(ctx)


def _sum_trades(r: dict[str, Any], a: TradesArgs) -> str:
    trades = r["trades"]
    if not trades:
        return f"No trades of {a.exchange} {a.symbol} in the range."
    prices = [Decimal(t["price"]) for t in trades]
    buy = _sum(t["amount"] for t in trades if t["side"] == "buy")
    sell = _sum(t["amount"] for t in trades if t["side"] == "sell")
    newest, oldest = trades[0], trades[-1]
    return (
        f"{r['count']} trades of {newest['exchange']} {newest['symbol']}, newest first, {oldest['ts']} to "
        f"{newest['ts']}: last {newest['price']}, low {min(prices)}, high {max(prices)}, "
        f"buy volume {buy}, sell volume {sell}."
    )


@tool("Recent trades", TradesOut, _sum_trades)
async def get_recent_trades(ctx: QueryContext, args: TradesArgs) -> dict[str, Any]:
    """Trades of one market, newest first, with since <= ts < until (default: the most recent). Each
    trade: id, price, amount, side (the taker's: buy or sell), ts (exchange time), recv_ts. At most
    `limit` (default 100). {MARKET}"""
    since, until = _times(args)
    return await queries.recent_trades(ctx, args.exchange, args.symbol, since, until, args.limit, args.market)


def _sum_book(r: dict[str, Any], a: BookArgs) -> str:
    head = f"{r['exchange']} {r['symbol']} order book, {r['status']}, at {r['ts']}"
    if not r["bids"] or not r["asks"]:
        return f"{head}: no levels ({len(r['bids'])} bids, {len(r['asks'])} asks)."
    (bid, bid_q), (ask, ask_q) = r["bids"][0], r["asks"][0]
    return (
        f"{head}: best bid {bid} x {bid_q}, best ask {ask} x {ask_q}, spread {Decimal(ask) - Decimal(bid)}; "
        f"{len(r['bids'])} bid and {len(r['asks'])} ask levels."
    )


@tool("Order book", BookOut, _sum_book)
async def get_orderbook(ctx: QueryContext, args: BookArgs) -> dict[str, Any]:
    """The live order book of one market: bids (highest first) and asks (lowest first) as [price, amount]
    pairs, `depth` levels per side (default 20), the exchange timestamp and a status: levels are only
    given while it is "synced". Needs the market's "book" channel (see list_markets). {MARKET}"""
    return queries.orderbook(ctx, args.exchange, args.symbol, args.depth, args.market)


def _sum_gaps(r: dict[str, Any], a: GapsArgs) -> str:
    gaps = r["gaps"]
    if not gaps:
        return "No gaps recorded."
    g = gaps[0]
    still_open = sum(1 for x in gaps if x["open"])
    return (
        f"{len(gaps)} gaps recorded ({still_open} open); newest: {g['exchange']} {g['symbol']} "
        f"{g['channel']} from {g['start']} to {g['end'] or 'now'} ({g['reason']}, "
        f"{g['recovered']} recovered)."
    )


@tool("Data gaps", GapsOut, _sum_gaps)
async def get_gaps(ctx: QueryContext, args: GapsArgs) -> dict[str, Any]:
    """Recorded gaps in the collected data, newest first: disconnects, order-book resyncs and trade-id
    gaps, each with channel, start, end (null while open), reason and how many trades were recovered.
    Optionally only one exchange and/or symbol."""
    return queries.gaps(ctx, args.exchange, args.symbol)


def _what(a: CandlesArgs | ProfileArgs | OrderFlowArgs) -> str:
    return f"{a.asset} (all venues)" if a.asset is not None else f"{a.exchange} {a.symbol}"


def _sum_candles(r: dict[str, Any], a: CandlesArgs) -> str:
    candles = r["candles"]
    if not candles:
        return f"No {a.interval} candles of {_what(a)} in the range."
    high = max(Decimal(c["high"]) for c in candles)
    low = min(Decimal(c["low"]) for c in candles)
    return (
        f"{len(candles)} {a.interval} candles of {_what(a)}, oldest first, "
        f"{candles[0]['start']} to {candles[-1]['start']}: last close {candles[-1]['close']}, "
        f"high {high}, low {low}, volume {_sum(c['volume'] for c in candles)}."
    )


@tool("Candles", CandlesOut, _sum_candles)
async def get_candles(ctx: QueryContext, args: CandlesArgs) -> dict[str, Any]:
    """OHLCV candles of one market, oldest first, aligned to UTC multiples of `interval`: open, high, low,
    close, volume, buy_volume, sell_volume, trades, vwap. Candles starting in [since, until); without
    since, the last `limit` (default 100) up to until (default now). {MARKET}"""
    since, until = _times(args)
    if asset_queries.wants_asset(args.asset, args.exchange, args.symbol):
        return await asset_queries.asset_candles(
            ctx, args.asset, args.markets, args.quotes, args.interval, since, until, args.limit
        )
    return await queries.candles(
        ctx, args.exchange, args.symbol, args.interval, since, until, args.limit, args.market
    )


def _sum_profile(r: dict[str, Any], a: ProfileArgs) -> str:
    if r["poc"] is None:
        return f"No trades of {_what(a)} in the range: the volume profile is empty."
    return (
        f"Volume profile of {_what(a)}: POC {r['poc']}, value area {r['val']} to {r['vah']} "
        f"holding {r['value_area']} of the total volume {r['total_volume']}, {len(r['bins'])} bins."
    )


@tool("Volume profile", ProfileOut, _sum_profile)
async def get_volume_profile(ctx: QueryContext, args: ProfileArgs) -> dict[str, Any]:
    """Volume by price over trades with since <= ts < until (default: the last hour): bins named by their
    lower edge (floor(price / bin) * bin) with volume, buy_volume and sell_volume; the POC (the bin with
    the most volume) and the value area VAL..VAH, grown from the POC until it holds the configured
    fraction (70% by default) of total_volume; value_area is the volume it holds. `bin` defaults to the
    market's own. {MARKET}"""
    since, until = _times(args)
    if asset_queries.wants_asset(args.asset, args.exchange, args.symbol):
        return await asset_queries.asset_volume_profile(
            ctx, args.asset, args.markets, args.quotes, since, until, _bin(args.bin)
        )
    return await queries.volume_profile(
        ctx, args.exchange, args.symbol, since, until, _bin(args.bin), args.market
    )


def _sum_order_flow(r: dict[str, Any], a: OrderFlowArgs) -> str:
    bars = r["bars"]
    if not bars:
        return f"No {a.interval} order-flow bars of {_what(a)} in the range."
    return (
        f"{len(bars)} {a.interval} order-flow bars of {_what(a)}, {bars[0]['start']} to "
        f"{bars[-1]['start']}: buy {_sum(b['buy_volume'] for b in bars)}, "
        f"sell {_sum(b['sell_volume'] for b in bars)}, cvd {bars[-1]['cvd']}, "
        f"{sum(b['large_trades'] for b in bars)} large trades."
    )


@tool("Order flow", OrderFlowOut, _sum_order_flow)
async def get_order_flow(ctx: QueryContext, args: OrderFlowArgs) -> dict[str, Any]:
    """Order flow per `interval` bar: buy and sell volume by taker side, delta (buy - sell), cvd (running
    delta from the first bar), trades, large_trades (notional >= the configured threshold), imbalance
    (buy / (buy + sell)). footprint=true adds per-bar bid/ask volume per price bin of width `bin`. Without
    since, the last 100 bars up to until (default now). {MARKET}"""
    since, until = _times(args)
    if asset_queries.wants_asset(args.asset, args.exchange, args.symbol):
        return await asset_queries.asset_order_flow(
            ctx, args.asset, args.markets, args.quotes, args.interval, since, until
        )
    return await queries.order_flow(
        ctx,
        args.exchange,
        args.symbol,
        args.interval,
        since,
        until,
        args.footprint,
        _bin(args.bin),
        args.market,
    )


# The SPEC §12 tools register themselves here, after the tools above (they use `tool` and the argument
# types): get_ticker, get_derivatives, get_liquidations.
from marketflow.api import mcp_market  # noqa: E402, F401, I001

RESOURCES: dict[str, tuple[str, str, Callable[[QueryContext], dict[str, Any]]]] = {
    "marketflow://markets": (
        "markets",
        "Every market the daemon collects (the list_markets tool's result).",
        queries.markets,
    ),
    "marketflow://status": (
        "status",
        "Health of the daemon and of every actor (the get_status tool's result).",
        queries.status,
    ),
}


def object_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of `struct` with the object itself at the root (MCP wants `type: object` there)."""
    (ref,), defs = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    root = dict(defs.pop(ref["$ref"].rpartition("/")[2]))
    root.pop("title", None)
    if defs:
        root["$defs"] = defs
    portable: dict[str, Any] = _portable(root)
    return portable


def _portable(node: Any) -> Any:
    """`node` with tuples (2020-12 `prefixItems` + `items: false`) as plain arrays of fixed length.

    Validators of the older drafts (Ajv in the TypeScript SDK and the MCP Inspector) ignore `prefixItems`
    and read `items: false` as "no items", so they would reject every `[price, amount]` pair.
    """
    if isinstance(node, list):
        return [_portable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _portable(value) for key, value in node.items()}
    prefix = out.pop("prefixItems", None)
    if prefix is not None:
        same = all(item == prefix[0] for item in prefix)
        out["items"] = prefix[0] if prefix and same else {}
    return out


def input_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """:func:`object_schema` of an arguments type, optional arguments shown as omittable, not nullable."""
    schema = object_schema(struct)
    for name, prop in schema["properties"].items():
        branches = prop.get("anyOf", [])
        if {"type": "null"} in branches and "default" in prop and prop["default"] is None:
            rest = [b for b in branches if b != {"type": "null"}]
            plain = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            schema["properties"][name] = {**plain, **rest[0]} if len(rest) == 1 else {**plain, "anyOf": rest}
    return schema
