"""The SPEC §12 routes: `/ticker/{exchange}/{symbol}`, `/derivatives`, `/liquidations`, over
`market_queries.py` (the MCP tools `get_ticker`, `get_derivatives`, `get_liquidations` call the same)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from quart import Blueprint

from marketflow.api import market_queries
from marketflow.api.app import context
from marketflow.api.keys import Scope
from marketflow.api.params import parse_time_range
from marketflow.api.routes import Dec, Exchange, Iso, Limit, Market, Symbol, Time, api

__all__ = ["blueprint"]

blueprint = Blueprint("marketflow_market_data", __name__)


class TickerQuery(msgspec.Struct):
    market: Market | None = None


class RowsQuery(msgspec.Struct):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = market_queries.DEFAULT_ROWS


class TickerOut(msgspec.Struct):
    exchange: str
    symbol: str
    ts: Iso | None
    bid: Dec | None
    bid_size: Dec | None
    ask: Dec | None
    ask_size: Dec | None
    last: Dec | None
    volume_24h: Dec | None
    mark_price: Dec | None
    index_price: Dec | None
    funding_rate: Dec | None
    next_funding_time: Iso | None
    open_interest: Dec | None
    open_interest_value: Dec | None


class DerivativesRowOut(msgspec.Struct):
    ts: Iso
    mark_price: Dec | None
    index_price: Dec | None
    funding_rate: Dec | None
    next_funding_time: Iso | None
    open_interest: Dec | None
    open_interest_value: Dec | None


class DerivativesOut(msgspec.Struct):
    rows: list[DerivativesRowOut]


class LiquidationOut(msgspec.Struct):
    exchange: str
    symbol: str
    ts: Iso
    side: Literal["buy", "sell"]
    price: Dec
    amount: Dec


class LiquidationsOut(msgspec.Struct):
    liquidations: list[LiquidationOut]
    count: int


@blueprint.get("/ticker/<exchange>/<symbol>")
@api(TickerOut, scope=Scope.READ, query=TickerQuery, errors=(400, 401, 403, 404))
async def ticker(exchange: str, symbol: str, query_args: TickerQuery) -> dict[str, Any]:
    """Best bid/ask, last, 24 h volume, mark, index, funding and open interest, live (null: not given)."""
    return market_queries.ticker(context(), exchange, symbol, query_args.market)


@blueprint.get("/derivatives")
@api(DerivativesOut, scope=Scope.READ, query=RowsQuery, errors=(400, 401, 403, 503))
async def derivatives(query_args: RowsQuery) -> dict[str, Any]:
    """Sampled mark, index, funding and open interest with since <= ts < until, newest first."""
    q = query_args
    since, until = parse_time_range(q)
    return await market_queries.derivatives(context(), q.exchange, q.symbol, since, until, q.limit, q.market)


@blueprint.get("/liquidations")
@api(LiquidationsOut, scope=Scope.READ, query=RowsQuery, errors=(400, 401, 403, 503))
async def liquidations(query_args: RowsQuery) -> dict[str, Any]:
    """Liquidations (side = the forced order's: sell closes a long) with since <= ts < until, newest first."""
    q = query_args
    since, until = parse_time_range(q)
    return await market_queries.liquidations(context(), q.exchange, q.symbol, since, until, q.limit, q.market)
