"""MCP (SPEC §7) at `/mcp`: the official SDK's Streamable HTTP transport, mounted beside the Quart app.

:func:`build_asgi` is the ASGI app the HTTP server serves: `/mcp` (and `/mcp/`) go to the MCP SDK's
session manager, everything else to the Quart app. The SDK speaks both protocol eras on one endpoint,
chosen per request by the `MCP-Protocol-Version` header: the stateless 2026-07-28 revision
(`server/discover`, `_meta` on every request, `Mcp-Method`/`Mcp-Name` headers) and the 2025-11-25
handshake (`initialize`, `Mcp-Session-Id`, `DELETE`, 404 for an unknown session).

This module imports nothing of the SDK: the SDK and what it drags in (pydantic, starlette, httpx, ...) cost
about 35 MB of RSS that a daemon queried only over HTTP should not carry. :mod:`~marketflow.api.mcp_sdk`
holds everything SDK-bound; the first request that gets past the checks below and is not a GET imports it
in a worker thread (the event loop keeps running meanwhile; concurrent first requests wait for the one
load; a failed load is a 503 naming the cause and is tried again by the next request) and starts the SDK's
session manager in a nursery of the ASGI lifespan, so it still stops with the server: lifespan shutdown
completes only after the MCP sessions are closed.

In front of the SDK: on a loopback listener a `Host` that is not a loopback name (or one of
`http.allowed_hosts`) gets a 421, a present `Origin` whose host is not this server's a 403, and the API-key
rules of HTTP reads apply (:class:`~marketflow.api.auth.AuthPolicy`), checked on every HTTP request.
`GET /mcp` is a 405: the server never sends unsolicited messages, and an idle stream held open would only
delay a graceful shutdown to its deadline. Each client (API key, else peer address) may hold a bounded
number of 2025-11-25 sessions, which expire unused (:mod:`~marketflow.api.mcp_sessions`).

Every tool calls the same :mod:`~marketflow.api.queries` function as the matching HTTP route, so its
`structuredContent` is that route's JSON; its `outputSchema` is generated from the route's documented
response type. Bad arguments come back as a tool error (`isError`) naming the argument; an unknown tool
is a JSON-RPC error (-32602), as the spec asks.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_type_hints
from urllib.parse import urlsplit

import attrs
import msgspec
import trio
from hypercorn.typing import ASGIFramework
from msgspec import Meta
from quart_trio import QuartTrio

from marketflow.api import queries
from marketflow.api.auth import AuthError, AuthPolicy, is_loopback, misdirected
from marketflow.api.keys import Scope as KeyScope
from marketflow.api.mcp_sessions import SessionLedgerStatistics, SessionLimits
from marketflow.api.params import parse_time_range
from marketflow.api.queries import QueryContext
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
from marketflow.config import Config, HttpConfig
from marketflow.exchanges import VENUES, example_feed_name, markets_text

if TYPE_CHECKING:
    from marketflow.api.mcp_sdk import McpTransport

__all__ = [
    "MCP_PATHS",
    "RESOURCES",
    "TOOLS",
    "McpAsgi",
    "McpStatistics",
    "SystemInfoOut",
    "ToolSpec",
    "build_asgi",
    "drain",
    "json_response",
    "origin_allowed",
]

log = logging.getLogger("marketflow.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MCP_PATHS = frozenset({"/mcp", "/mcp/"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

INSTRUCTIONS = (
    f"marketflow collects exact crypto market data live from {' and '.join(VENUES)} (trades, order books, "
    "tickers, derivatives data and liquidations) and computes order-flow analytics from it. Call "
    "list_markets first: every other market tool takes an exchange and a symbol from that list "
    "(normalized BTC-USDT / BTC-USDT-PERP, or the native BTCUSDT with market= when ambiguous). Prices "
    "and amounts are exact decimal strings; times are ISO 8601 UTC. "
    "Time arguments take ISO 8601 (2026-08-09T12:00:00Z; no zone means UTC) or epoch milliseconds; "
    "ranges are since <= ts < until."
)

# -- arguments --------------------------------------------------------------------------------------------

Exchange = Annotated[
    str, Meta(description="Exchange name from list_markets: " + " or ".join(f'"{n}"' for n in VENUES) + ".")
]
Symbol = Annotated[
    str,
    Meta(
        description="Symbol from list_markets: normalized (BTC-USDT spot, BTC-USDT-PERP perpetual) or the "
        "exchange's native spelling (BTCUSDT) together with market= when both markets list it."
    ),
]
Market = Annotated[str, Meta(description=f"Market of a native symbol: {markets_text()}.")]
Time = Annotated[
    str | int,
    Meta(description="ISO 8601 UTC (2026-08-09T12:00:00Z; no zone = UTC) or epoch milliseconds (integer)."),
]
Interval = Annotated[str, Meta(description='Bar length: a number and s|m|h|d, e.g. "1m", "5m", "1h".')]
Bin = Annotated[
    str | int | float,
    Meta(description='Price bin width, best as a decimal string such as "10" or "0.5" (exact).'),
]

Limit = Annotated[
    int, Meta(ge=1, le=queries.MAX_LIMIT, description="Most rows to return (default 100, at most 10000).")
]


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


class StatusArgs(msgspec.Struct, forbid_unknown_fields=True):
    actor: (
        Annotated[
            str,
            Meta(
                description=f"Only this actor, e.g. {example_feed_name()}, storage, books "
                "(default: every actor)."
            ),
        ]
        | None
    ) = None


class TradesArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = 100


class BookArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None
    depth: Annotated[
        int, Meta(ge=1, le=queries.MAX_DEPTH, description="Price levels per side, best first (default 20).")
    ] = 20


class GapsArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Annotated[str, Meta(description="Only gaps of this exchange.")] | None = None
    symbol: (
        Annotated[str, Meta(description="Only gaps of this symbol (normalized, e.g. BTC-USDT).")] | None
    ) = None


class CandlesArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange
    symbol: Symbol
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = 100


class ProfileArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    bin: Bin | None = None


class OrderFlowArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange
    symbol: Symbol
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    footprint: Annotated[bool, Meta(description="Add per-bar footprints (bid/ask volume per price bin).")] = (
        False
    )
    bin: Bin | None = None


# -- results the HTTP routes have no documented type for -----------------------------------------------------


class AnalyticsInfoOut(msgspec.Struct):
    candle_intervals: list[str]
    value_area: str
    large_trade_notional: str
    live: bool


class SystemInfoOut(msgspec.Struct):
    """`/mcp/info` and the `system_info` tool."""

    name: str
    version: str
    python: str
    started_at: str
    uptime_s: float
    config: str | None
    storage: str
    http_listen: str
    health: str
    feeds: list[str]
    markets: int
    analytics: AnalyticsInfoOut


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
    since, until = parse_time_range(args)
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


def _sum_candles(r: dict[str, Any], a: CandlesArgs) -> str:
    candles = r["candles"]
    if not candles:
        return f"No {a.interval} candles of {a.exchange} {a.symbol} in the range."
    high = max(Decimal(c["high"]) for c in candles)
    low = min(Decimal(c["low"]) for c in candles)
    return (
        f"{len(candles)} {a.interval} candles of {a.exchange} {a.symbol}, oldest first, "
        f"{candles[0]['start']} to {candles[-1]['start']}: last close {candles[-1]['close']}, "
        f"high {high}, low {low}, volume {_sum(c['volume'] for c in candles)}."
    )


@tool("Candles", CandlesOut, _sum_candles)
async def get_candles(ctx: QueryContext, args: CandlesArgs) -> dict[str, Any]:
    """OHLCV candles of one market, oldest first, aligned to UTC multiples of `interval`: open, high, low,
    close, volume, buy_volume, sell_volume, trades, vwap. Candles starting in [since, until); without
    since, the last `limit` (default 100) up to until (default now). {MARKET}"""
    since, until = parse_time_range(args)
    return await queries.candles(
        ctx, args.exchange, args.symbol, args.interval, since, until, args.limit, args.market
    )


def _sum_profile(r: dict[str, Any], a: ProfileArgs) -> str:
    if r["poc"] is None:
        return f"No trades of {a.exchange} {a.symbol} in the range: the volume profile is empty."
    return (
        f"Volume profile of {a.exchange} {a.symbol}: POC {r['poc']}, value area {r['val']} to {r['vah']} "
        f"holding {r['value_area']} of the total volume {r['total_volume']}, {len(r['bins'])} bins."
    )


@tool("Volume profile", ProfileOut, _sum_profile)
async def get_volume_profile(ctx: QueryContext, args: ProfileArgs) -> dict[str, Any]:
    """Volume by price over trades with since <= ts < until (default: the last hour): bins named by their
    lower edge (floor(price / bin) * bin) with volume, buy_volume and sell_volume; the POC (the bin with
    the most volume) and the value area VAL..VAH, grown from the POC until it holds the configured
    fraction (70% by default) of total_volume; value_area is the volume it holds. `bin` defaults to the
    market's own. {MARKET}"""
    since, until = parse_time_range(args)
    return await queries.volume_profile(
        ctx, args.exchange, args.symbol, since, until, _bin(args.bin), args.market
    )


def _sum_order_flow(r: dict[str, Any], a: OrderFlowArgs) -> str:
    bars = r["bars"]
    if not bars:
        return f"No {a.interval} order-flow bars of {a.exchange} {a.symbol} in the range."
    return (
        f"{len(bars)} {a.interval} order-flow bars of {a.exchange} {a.symbol}, {bars[0]['start']} to "
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
    since, until = parse_time_range(args)
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


# -- the ASGI composition ---------------------------------------------------------------------------------


def _hostname(authority: str) -> str | None:
    """The lower-case host of `authority` (`host[:port]`, IPv6 in brackets), or None if it is malformed."""
    try:
        parts = urlsplit("//" + authority)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    return parts.hostname or None


def origin_allowed(origin: str, listen_host: str, host_header: str | None) -> bool:
    """Whether a request's `Origin` is this server's own.

    Its host must equal, exactly, one of this server's names: the listen address; loopback names when it
    listens on loopback or on every interface; or, on every interface, the request's `Host` when that is
    an IP address (a DNS name there could be a rebinding attacker's, who controls both headers).
    """
    try:
        parts = urlsplit(origin.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return False
    listen = listen_host.strip().lower().removeprefix("[").removesuffix("]")
    if listen in WILDCARD_HOSTS:
        if host in LOOPBACK_NAMES:
            return True
        request_host = _hostname(host_header or "")
        return request_host is not None and host == request_host and _is_ip(request_host)
    if is_loopback(listen):
        return host in LOOPBACK_NAMES or host == listen
    return host == listen


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ScopeHeaders(Mapping[str, str]):
    """The request headers of an ASGI `scope`, by case-insensitive name (the first of repeated ones)."""

    def __init__(self, scope: Scope) -> None:
        self._values: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            self._values.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


async def json_response(
    send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Send a whole JSON response."""
    data = msgspec.json.encode(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def drain(receive: Receive) -> None:
    """Read the request body to its end, so the connection can serve the next request."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class McpUnavailable(Exception):
    """The MCP SDK side cannot serve: it failed to load or start, or the server is shutting down."""


def _load_transport(ctx: QueryContext) -> McpTransport:
    """Import the MCP SDK and build the server of `ctx`: the ~0.5 s, ~35 MB part, run in a worker thread."""
    from marketflow.api.mcp_sdk import McpTransport

    return McpTransport(ctx)


@attrs.define(eq=False)
class _Lifetime:
    """One ASGI lifespan: the nursery the SDK's session manager runs in once needed, and its stop signal."""

    nursery: trio.Nursery
    stop: trio.Event = attrs.Factory(trio.Event)
    serving: bool = False


@attrs.frozen
class McpStatistics:
    """What :meth:`McpAsgi.statistics` reports about the lazily loaded SDK side."""

    sdk_loaded: bool
    """Whether the MCP SDK is imported and the server built (on the first request that reaches it)."""
    sdk_loads: int
    """Load attempts, failed ones included."""
    serving: bool
    """Whether a session manager runs (from the first SDK request of a lifespan to its shutdown)."""


class McpAsgi:
    """`/mcp` to the MCP SDK (behind Origin and API-key checks), everything else to the Quart app.

    The SDK is imported on the first request that passes the checks and is not a GET, in a worker thread
    so that the event loop keeps running meanwhile; its session manager then runs in a nursery of the ASGI
    lifespan until the server shuts down.
    """

    def __init__(
        self,
        ctx: QueryContext,
        http: HttpConfig,
        quart_app: QuartTrio,
        limits: SessionLimits | None = None,
    ) -> None:
        self.ctx = ctx
        self.limits = SessionLimits() if limits is None else limits
        self.quart_app = quart_app
        self.quart = cast(ASGIApp, quart_app)
        self.listen_host = http.host
        self._transport: McpTransport | None = None
        self._lifetime: _Lifetime | None = None
        self._loading = trio.Lock()
        self._loads = 0

    @property
    def policy(self) -> AuthPolicy:
        policy: AuthPolicy = self.quart_app.config["MARKETFLOW_AUTH"]
        return policy

    def statistics(self) -> McpStatistics:
        lifetime = self._lifetime
        serving = lifetime is not None and lifetime.serving and not lifetime.stop.is_set()
        return McpStatistics(self._transport is not None, self._loads, serving)

    def session_statistics(self) -> SessionLedgerStatistics | None:
        """The 2025-11-25 sessions held per client, while a session manager runs."""
        transport = self._transport
        return None if transport is None or transport.ledger is None else transport.ledger.statistics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path: str = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] == "http" and (path in MCP_PATHS or path.startswith("/mcp/")):
            await self._mcp(scope, receive, send, path)
            return
        await self.quart(scope, receive, send)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        headers = ScopeHeaders(scope)
        host = headers.get("host")
        if not self.policy.host_allowed(host):
            await drain(receive)
            refused = misdirected(host or "")
            await json_response(send, refused.status, {"error": refused.code, "detail": refused.detail})
            return
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.listen_host, headers.get("host")):
            await drain(receive)
            detail = f"Origin {origin[:100]!r} is not this server's; cross-origin MCP requests are refused"
            await json_response(send, 403, {"error": "forbidden", "detail": detail})
            return
        if path not in MCP_PATHS:  # /mcp/ping, /mcp/info: Quart routes with their own auth
            await self.quart(scope, receive, send)
            return
        client = scope.get("client")
        try:
            key = self.policy.authorize(KeyScope.READ, headers, client[0] if client else None)
        except AuthError as exc:
            await drain(receive)
            extra = [("www-authenticate", 'Bearer realm="marketflow"')] if exc.status == 401 else []
            await json_response(send, exc.status, {"error": exc.code, "detail": exc.detail}, extra)
            return
        if scope["method"] == "GET":
            await drain(receive)
            detail = "this server sends no unsolicited messages, so it offers no GET stream; POST to /mcp"
            await json_response(
                send, 405, {"error": "method_not_allowed", "detail": detail}, [("allow", "POST, DELETE")]
            )
            return
        lifetime = self._lifetime
        if lifetime is None:
            await drain(receive)
            detail = "the MCP session manager is not running (the server got no ASGI lifespan startup)"
            await json_response(send, 503, {"error": "unavailable", "detail": detail})
            return
        try:
            transport = await self._serving_transport(lifetime)
        except McpUnavailable as exc:
            await drain(receive)
            await json_response(send, 503, {"error": "unavailable", "detail": str(exc)})
            return
        await transport.handle(scope, receive, send, key)

    async def _serving_transport(self, lifetime: _Lifetime) -> McpTransport:
        """The SDK transport with its session manager running in `lifetime`: loaded and started if need be.

        Concurrent first requests wait for one load; a failed load is tried again by the next request.
        """
        async with self._loading:
            transport = self._transport
            if transport is None:
                self._loads += 1
                try:
                    # Not cancellable: an abandoned import would finish anyway, then be repeated.
                    transport = await trio.to_thread.run_sync(_load_transport, self.ctx)
                except Exception as exc:
                    log.error("loading the MCP SDK failed: %r", exc, exc_info=exc)
                    raise McpUnavailable(f"the MCP SDK could not be loaded: {exc!r}") from exc
                self._transport = transport
            if not lifetime.serving:
                if lifetime.stop.is_set():
                    raise McpUnavailable("the server is shutting down")
                try:
                    await lifetime.nursery.start(transport.run, lifetime.stop, self.limits)
                except Exception as exc:
                    log.error("starting the MCP session manager failed: %r", exc, exc_info=exc)
                    raise McpUnavailable(f"the MCP session manager could not start: {exc!r}") from exc
                lifetime.serving = True
            return transport

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Quart app's lifespan, in a nursery where the first MCP request starts the session manager.

        A server run that gets no MCP request never loads the SDK; one that does closes the MCP sessions
        before it reports its shutdown complete.
        """
        held: list[Message] = []

        async def send_later(message: Message) -> None:
            # Report shutdown complete only once the MCP sessions are closed too.
            if message["type"] == "lifespan.shutdown.complete":
                held.append(message)
            else:
                await send(message)

        async with trio.open_nursery() as nursery:
            lifetime = self._lifetime = _Lifetime(nursery)
            try:
                await self.quart(scope, receive, send_later)
            finally:
                self._lifetime = None
                lifetime.stop.set()  # the session manager, if started, closes its sessions and returns
        for message in held:
            await send(message)


def build_asgi(ctx: QueryContext, config: Config | HttpConfig, quart_app: QuartTrio) -> ASGIFramework:
    """The ASGI app the HTTP server serves: MCP at `/mcp`, the Quart app everywhere else.

    Pass it to :class:`~marketflow.api.server.HttpServer` as `asgi_factory`.
    """
    http = config.http if isinstance(config, Config) else config
    app: ASGIFramework = McpAsgi(ctx, http, quart_app)  # type: ignore[assignment]
    return app
