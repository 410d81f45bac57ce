"""The SPEC §6 routes (all but `/mcp*` and `/collectors/symbols`), thin over `queries.py`.

Each route validates its query string with a msgspec type (which also documents it in `/openapi.json`),
checks auth with :func:`~marketflow.api.auth.require_scope`, converts times and calls the query function
the MCP tools call too, so both answer the same.

The routes live by family, each module adding its routes to the one `blueprint` (routing.py, with the `api`
decorator and the parameter types): status_routes.py (`/`, `/ping`, `/health`, status), query_routes.py
(trades, markets, books, candles, volume profile, order flow, gaps) and operator_routes.py (metrics, API
keys, task tree). Imported here in that order, which is the order of `/openapi.json`; this module
re-exports every name they had here.
"""

from __future__ import annotations

from marketflow.api.routing import (
    Asset,
    Bin,
    Dec,
    Exchange,
    Interval,
    Iso,
    Limit,
    Market,
    Markets,
    Quotes,
    Symbol,
    Time,
    api,
    blueprint,
)

# Each family adds its routes to the blueprint when imported: this order (status, queries, operators)
# is the order of the routes in `/openapi.json`.
# isort: split
from marketflow.api.status_routes import (
    ActorOut,
    FeedOut,
    HealthOut,
    PongOut,
    QueueOut,
    RootOut,
    ServiceOut,
    StatusOut,
    StorageOut,
    collectors_status,
    collectors_status_one,
    health,
    ping,
    root,
    storage_stats,
)

# isort: split
from marketflow.api.query_routes import (
    BarOut,
    BookOut,
    BookQuery,
    CandleOut,
    CandlesOut,
    CandlesQuery,
    GapOut,
    GapsOut,
    GapsQuery,
    MarketOut,
    MarketsOut,
    OrderFlowOut,
    OrderFlowQuery,
    ProfileBinOut,
    ProfileOut,
    ProfileQuery,
    TradeOut,
    TradesOut,
    TradesQuery,
    book,
    candles,
    gaps,
    markets,
    order_flow,
    trades,
    volume_profile,
)

# isort: split
from marketflow.api.operator_routes import (
    CreatedKeyOut,
    KeyOut,
    KeyRequest,
    KeysOut,
    TaskOut,
    TasksOut,
    create_key,
    debug_tasks,
    list_keys,
    metrics,
    revoke_key,
)

__all__ = [
    "ActorOut",
    "Asset",
    "BarOut",
    "Bin",
    "BookOut",
    "BookQuery",
    "CandleOut",
    "CandlesOut",
    "CandlesQuery",
    "CreatedKeyOut",
    "Dec",
    "Exchange",
    "FeedOut",
    "GapOut",
    "GapsOut",
    "GapsQuery",
    "HealthOut",
    "Interval",
    "Iso",
    "KeyOut",
    "KeyRequest",
    "KeysOut",
    "Limit",
    "Market",
    "MarketOut",
    "Markets",
    "MarketsOut",
    "OrderFlowOut",
    "OrderFlowQuery",
    "PongOut",
    "ProfileBinOut",
    "ProfileOut",
    "ProfileQuery",
    "QueueOut",
    "Quotes",
    "RootOut",
    "ServiceOut",
    "StatusOut",
    "StorageOut",
    "Symbol",
    "TaskOut",
    "TasksOut",
    "Time",
    "TradeOut",
    "TradesOut",
    "TradesQuery",
    "api",
    "blueprint",
    "book",
    "candles",
    "collectors_status",
    "collectors_status_one",
    "create_key",
    "debug_tasks",
    "gaps",
    "health",
    "list_keys",
    "markets",
    "metrics",
    "order_flow",
    "ping",
    "revoke_key",
    "root",
    "storage_stats",
    "trades",
    "volume_profile",
]
