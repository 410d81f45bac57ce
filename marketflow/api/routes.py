"""The SPEC §6 routes (all but `/mcp*` and `/collectors/symbols`), thin over `queries.py`.

Each route validates its query string with a msgspec type (which also documents it in `/openapi.json`),
checks auth with :func:`~marketflow.api.auth.require_scope`, converts times and calls the query function
the MCP tools call too, so both answer the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, cast

import msgspec
import trio
from msgspec import Meta
from quart import Blueprint, Response, current_app
from quart_schema import document_response, security_scheme, validate_querystring, validate_request

from marketflow import __version__
from marketflow.api import queries
from marketflow.api.app import SECURITY, ErrorBody, PrometheusText, context, require_json
from marketflow.api.auth import require_scope
from marketflow.api.keys import DEFAULT_DAYS, MAX_DAYS, KeyRequestError, KeyStore, Scope
from marketflow.api.metrics import CONTENT_TYPE, render
from marketflow.api.params import parse_time_range
from marketflow.api.queries import MAX_LIMIT, QueryError
from marketflow.exchanges import VENUES, market_names

__all__ = ["blueprint"]

blueprint = Blueprint("marketflow", __name__)
log = logging.getLogger("marketflow.http")

Time = Annotated[
    str, Meta(description="ISO 8601 (2026-08-09T12:00:19.680Z; no zone = UTC) or epoch milliseconds")
]
Exchange = Annotated[str, Meta(description=" | ".join(VENUES))]
Symbol = Annotated[
    str, Meta(description="normalized (BTC-USDT, BTC-USDT-PERP) or native (BTCUSDT) when unambiguous")
]
Market = Annotated[
    str, Meta(description=" | ".join(market_names()) + ": picks the market of a native symbol")
]
Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT)]
Interval = Annotated[str, Meta(description='a number and s|m|h|d, e.g. "1m", "5m", "1h"')]
Bin = Annotated[str, Meta(description='price bin as a decimal string, e.g. "10"')]
Dec = Annotated[str, Meta(description="exact decimal")]
Iso = Annotated[str, Meta(description="ISO 8601 UTC with milliseconds")]


F = TypeVar("F", bound=Callable[..., Any])


def api(
    response: type | None = None,
    *,
    scope: Scope | None = Scope.READ,
    query: type | None = None,
    body: type | None = None,
    status: int | tuple[int, ...] = 200,
    errors: tuple[int, ...] = (),
) -> Callable[[F], F]:
    """Auth, validation and documentation of a route, applied in that order (outermost first).

    `scope` None: open to everyone. `query`/`body`: the msgspec type validating (and documenting) the
    query string or the JSON body. `response`: the type of a `status` answer; `errors`: the error statuses.
    Auth comes first so a request without the right key is refused before its parameters are looked at.
    """

    def decorator(func: F) -> F:
        wrapped: Any = func
        for code in errors:
            wrapped = document_response(ErrorBody, code)(wrapped)
        if response is not None:
            for code in (status,) if isinstance(status, int) else status:
                wrapped = document_response(response, code)(wrapped)
        if query is not None:
            wrapped = validate_querystring(query)(wrapped)
        if body is not None:
            wrapped = require_json(validate_request(body)(wrapped))
        if scope is not None:
            wrapped = security_scheme(SECURITY)(require_scope(scope)(wrapped))
        return cast(F, wrapped)

    return decorator


# -- request types ------------------------------------------------------------------------------------------


class TradesQuery(msgspec.Struct):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = queries.DEFAULT_TRADES_LIMIT


class BookQuery(msgspec.Struct):
    depth: Annotated[int, Meta(ge=1, le=queries.MAX_DEPTH, description="levels per side")] | None = None
    market: Market | None = None


class CandlesQuery(msgspec.Struct):
    exchange: Exchange
    symbol: Symbol
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = queries.DEFAULT_CANDLES_LIMIT


class ProfileQuery(msgspec.Struct):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    bin: Bin | None = None


class OrderFlowQuery(msgspec.Struct):
    exchange: Exchange
    symbol: Symbol
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    footprint: bool = False
    bin: Bin | None = None


class GapsQuery(msgspec.Struct):
    exchange: Exchange | None = None
    symbol: Symbol | None = None


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    scopes: Annotated[list[Literal["read", "write", "admin"]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["read"]
    )
    days: Annotated[float, Meta(gt=0, le=MAX_DAYS)] = DEFAULT_DAYS


# -- response types (documentation; the tests check responses against them) ---------------------------------


class RootOut(msgspec.Struct):
    name: str
    version: str
    links: dict[str, str]


class PongOut(msgspec.Struct):
    pong: bool


class ServiceOut(msgspec.Struct):
    state: str
    ok: bool
    problem: str | None = None


class HealthOut(msgspec.Struct):
    status: Literal["healthy", "degraded", "unhealthy"]
    services: dict[str, ServiceOut]


class QueueOut(msgspec.Struct):
    bus: str
    queued_batches: int
    capacity: int
    overflow: str
    dropped_batches: int
    dropped_items: int


class FeedOut(msgspec.Struct):
    exchange: str | None
    market: str | None
    state: str
    msgs_per_s: float | None
    last_message_age_s: float | None
    messages: int
    data_frames: int
    bytes: int
    connects: int
    disconnects: int
    pongs: int
    subscribed: list[str]
    rejected: dict[str, str]
    last_error: str | None


class ActorOut(msgspec.Struct):
    name: str
    state: str
    restarts: int
    failures: int
    circuit: str
    last_error: str | None
    uptime_s: float | None
    queue: list[QueueOut]
    feed: FeedOut | None = None
    statistics: Any = None


class StatusOut(msgspec.Struct):
    status: str
    actors: list[ActorOut]


class StorageOut(msgspec.Struct):
    engine: str
    url: str
    state: str
    restarts: int
    rows_written: int | None = None
    batches: int | None = None
    lag_ms: float | None = None
    buffered: int | None = None
    spooled: int | None = None
    errors: int | None = None


class TradeOut(msgspec.Struct):
    exchange: str
    symbol: str
    id: str
    price: Dec
    amount: Dec
    side: Literal["buy", "sell"]
    ts: Iso
    recv_ts: Iso


class TradesOut(msgspec.Struct):
    trades: list[TradeOut]
    count: int


class BookOut(msgspec.Struct):
    exchange: str
    symbol: str
    bids: list[tuple[Dec, Dec]]
    asks: list[tuple[Dec, Dec]]
    ts: Iso | None
    status: Literal["synced", "resyncing", "waiting"]


class CandleOut(msgspec.Struct):
    start: Iso
    open: Dec
    high: Dec
    low: Dec
    close: Dec
    volume: Dec
    buy_volume: Dec
    sell_volume: Dec
    trades: int
    vwap: Dec | None


class CandlesOut(msgspec.Struct):
    candles: list[CandleOut]


class ProfileBinOut(msgspec.Struct):
    price: Dec
    volume: Dec
    buy_volume: Dec
    sell_volume: Dec


class ProfileOut(msgspec.Struct):
    poc: Dec | None
    vah: Dec | None
    val: Dec | None
    value_area: Dec
    total_volume: Dec
    bins: list[ProfileBinOut]


class BarOut(msgspec.Struct):
    start: Iso
    buy_volume: Dec
    sell_volume: Dec
    delta: Dec
    cvd: Dec
    trades: int
    large_trades: int
    imbalance: Dec | None
    liquidations_buy: Dec
    liquidations_sell: Dec
    oi_change: Dec | None
    footprint: dict[str, Any] | None = None


class OrderFlowOut(msgspec.Struct):
    bars: list[BarOut]


class GapOut(msgspec.Struct):
    exchange: str
    symbol: str
    channel: str
    start: Iso
    end: Iso | None
    open: bool
    reason: str
    recovered: int


class GapsOut(msgspec.Struct):
    gaps: list[GapOut]


class MarketOut(msgspec.Struct):
    exchange: str
    market: str
    symbol: str
    native: str
    channels: list[str]
    amount_unit: Annotated[
        Literal["base", "contracts"] | None,
        Meta(description='what amount counts: "base" currency or "contracts" (null: not loaded yet)'),
    ]
    contract_value: Annotated[
        Dec | None, Meta(description="one contract's worth (base units if linear, quote if inverse)")
    ]
    contract_currency: Annotated[str | None, Meta(description="the currency of contract_value")]
    inverse: Annotated[bool | None, Meta(description="an inverse contract: notional = amount·contract_value")]


class MarketsOut(msgspec.Struct):
    markets: list[MarketOut]


class KeyOut(msgspec.Struct):
    prefix: str
    name: str
    scopes: list[str]
    created: Iso
    expires: Iso | None
    revoked: Iso | None
    state: str


class CreatedKeyOut(msgspec.Struct):
    key: Annotated[str, Meta(description="the secret: shown here once, never again")]
    prefix: str
    name: str
    scopes: list[str]
    created: Iso
    expires: Iso | None
    revoked: Iso | None
    state: str


class KeysOut(msgspec.Struct):
    keys: list[KeyOut]


class TaskOut(msgspec.Struct):
    name: str
    children: list[TaskOut]


class TasksOut(msgspec.Struct):
    tasks: TaskOut


# -- routes -------------------------------------------------------------------------------------------------


@blueprint.get("/")
@api(RootOut, scope=None)
async def root() -> dict[str, Any] | Response:
    """Name, version and links; a browser (Accept prefers text/html) is sent to the dashboard."""
    from quart import redirect, request

    if request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html":
        # Relative, so it still lands right behind a reverse proxy that mounts us under a prefix.
        return redirect("dashboard", 303)  # type: ignore[return-value]
    links = {
        "openapi": "/openapi.json",
        "health": "/health",
        "status": "/collectors/status",
        "trades": "/collectors/trades",
        "metrics": "/metrics",
        "markets": "/markets",
    }
    if context().daemon.config.http.api_docs:
        links = {"docs": "/docs", **links}
    return {"name": "marketflow", "version": __version__, "links": links}


@blueprint.get("/ping")
@api(PongOut, scope=None)
async def ping() -> dict[str, Any]:
    """Liveness: answers while the HTTP server runs."""
    return {"pong": True}


@blueprint.get("/health")
@api(HealthOut, scope=None, status=(200, 503))
async def health() -> tuple[dict[str, Any], int]:
    """Health: 200 healthy or degraded, 503 unhealthy (storage not running). Open to everyone."""
    daemon = context().daemon
    report = daemon.health()
    services: dict[str, dict[str, Any]] = {}
    for child in daemon.supervisor.statistics().children:
        problem = report.problems.get(child.name)
        services[child.name] = {"state": child.state, "ok": problem is None, "problem": problem}
    for name, problem in report.problems.items():
        services.setdefault(name, {"state": problem, "ok": False, "problem": problem})
    return {"status": report.status, "services": services}, 503 if report.status == "unhealthy" else 200


@blueprint.get("/collectors/status")
@api(StatusOut, scope=Scope.READ, errors=(401, 403))
async def collectors_status() -> dict[str, Any]:
    """Every actor: state, restarts, circuit, and per feed msgs/s, last message age, queue depth."""
    return queries.status(context())


@blueprint.get("/collectors/status/<name>")
@api(ActorOut, scope=Scope.READ, errors=(401, 403, 404))
async def collectors_status_one(name: str) -> dict[str, Any]:
    """One actor by name (a feed connection such as bybit-spot, storage, books, normalizer, ...)."""
    return queries.status(context(), name)


@blueprint.get("/collectors/storage/stats")
@api(StorageOut, scope=Scope.READ, errors=(401, 403))
async def storage_stats() -> dict[str, Any]:
    """The storage writer: rows written, batches, lag, buffered, spooled, errors."""
    return queries.storage_stats(context())


@blueprint.get("/collectors/trades")
@api(TradesOut, scope=Scope.READ, query=TradesQuery, errors=(400, 401, 403, 503))
async def trades(query_args: TradesQuery) -> dict[str, Any]:
    """Trades with since <= ts < until, newest first (recent from memory, older from storage)."""
    q = query_args
    since, until = parse_time_range(q)
    return await queries.recent_trades(context(), q.exchange, q.symbol, since, until, q.limit, q.market)


@blueprint.get("/markets")
@api(MarketsOut, scope=Scope.READ, errors=(401, 403))
async def markets() -> dict[str, Any]:
    """Every configured market: exchange, market, normalized and native symbol, channels."""
    return queries.markets(context())


@blueprint.get("/book/<exchange>/<symbol>")
@api(BookOut, scope=Scope.READ, query=BookQuery, errors=(400, 401, 403, 404))
async def book(exchange: str, symbol: str, query_args: BookQuery) -> dict[str, Any]:
    """The live order book; levels are empty unless status is synced."""
    return queries.orderbook(context(), exchange, symbol, query_args.depth, query_args.market)


@blueprint.get("/candles")
@api(CandlesOut, scope=Scope.READ, query=CandlesQuery, errors=(400, 401, 403, 503))
async def candles(query_args: CandlesQuery) -> dict[str, Any]:
    """Candles starting in [since, until), oldest first; without since, the last `limit` up to until."""
    q = query_args
    since, until = parse_time_range(q)
    return await queries.candles(context(), q.exchange, q.symbol, q.interval, since, until, q.limit, q.market)


@blueprint.get("/volume-profile")
@api(ProfileOut, scope=Scope.READ, query=ProfileQuery, errors=(400, 401, 403, 503))
async def volume_profile(query_args: ProfileQuery) -> dict[str, Any]:
    """Volume profile of trades with since <= ts < until (default: the last hour)."""
    q = query_args
    since, until = parse_time_range(q)
    return await queries.volume_profile(
        context(),
        q.exchange,
        q.symbol,
        since,
        until,
        queries.parse_bin(q.bin),
        q.market,
    )


@blueprint.get("/order-flow")
@api(OrderFlowOut, scope=Scope.READ, query=OrderFlowQuery, errors=(400, 401, 403, 503))
async def order_flow(query_args: OrderFlowQuery) -> dict[str, Any]:
    """Order flow per bar (delta, cvd, imbalance, large trades; footprint=true adds footprints)."""
    q = query_args
    since, until = parse_time_range(q)
    return await queries.order_flow(
        context(),
        q.exchange,
        q.symbol,
        q.interval,
        since,
        until,
        q.footprint,
        queries.parse_bin(q.bin),
        q.market,
    )


@blueprint.get("/gaps")
@api(GapsOut, scope=Scope.READ, query=GapsQuery, errors=(400, 401, 403))
async def gaps(query_args: GapsQuery) -> dict[str, Any]:
    """Recorded gaps (disconnects, book resyncs, trade-id gaps) and what was recovered, newest first."""
    return queries.gaps(context(), query_args.exchange, query_args.symbol)


@blueprint.get("/metrics")
@api(PrometheusText, scope=Scope.READ, errors=(401, 403))
async def metrics() -> Response:
    """Prometheus text exposition."""
    body = render(current_app.config["MARKETFLOW_REGISTRY"])
    return Response(body, status=200, content_type=CONTENT_TYPE)


def _key_store() -> KeyStore:
    store: KeyStore = current_app.config["MARKETFLOW_AUTH"].store
    return store


T = TypeVar("T")


async def _in_store(func: Callable[..., T], *args: Any) -> T:
    """A key store call, in a worker thread; an unusable key file is a 503 whose cause goes to the log."""
    try:
        return await trio.to_thread.run_sync(func, *args)
    except OSError as exc:
        log.error("API key file unusable: %s", exc)
        detail = "the API key file cannot be used right now; the daemon's log says why"
        raise QueryError("unavailable", detail, None, 503) from None


@blueprint.post("/auth/api-keys")
@api(CreatedKeyOut, scope=Scope.ADMIN, body=KeyRequest, status=201, errors=(400, 401, 403, 413, 415, 503))
async def create_key(data: KeyRequest) -> tuple[dict[str, Any], int]:
    """Create an API key; the response holds the key itself, the only time it is shown."""
    store = _key_store()
    try:
        secret, key = await _in_store(store.create, data.name, data.scopes, data.days)
    except KeyRequestError as exc:
        raise QueryError("bad_parameter", str(exc), exc.param) from None
    return {"key": secret, **key.public()}, 201


@blueprint.get("/auth/api-keys")
@api(KeysOut, scope=Scope.ADMIN, errors=(401, 403, 503))
async def list_keys() -> dict[str, Any]:
    """Every key, without secrets (prefix, name, scopes, created, expires, revoked, state)."""
    keys = await _in_store(_key_store().keys)
    return {"keys": [k.public() for k in keys]}


@blueprint.delete("/auth/api-keys/<prefix>")
@api(KeyOut, scope=Scope.ADMIN, errors=(400, 401, 403, 404, 503))
async def revoke_key(prefix: str) -> dict[str, Any]:
    """Revoke a key by its prefix."""
    try:
        key = await _in_store(_key_store().revoke, prefix)
    except KeyRequestError as exc:
        status = 404 if "no API key" in str(exc) else 400
        raise QueryError(
            "not_found" if status == 404 else "bad_parameter", str(exc), "prefix", status
        ) from None
    return key.public()


def _task_tree(task: trio.lowlevel.Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "children": [_task_tree(child) for nursery in task.child_nurseries for child in nursery.child_tasks],
    }


@blueprint.get("/debug/tasks")
@api(TasksOut, scope=Scope.ADMIN, errors=(401, 403))
async def debug_tasks() -> dict[str, Any]:
    """The trio task tree of the daemon process (admin scope)."""
    root = trio.lowlevel.current_root_task()
    if root is None:  # pragma: no cover - there is always a root task under trio.run
        raise QueryError("unavailable", "no trio root task", None, 503)
    return {"tasks": _task_tree(root)}
