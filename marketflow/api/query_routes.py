"""The SPEC §6 routes that read market data: `/collectors/trades`, `/markets`, `/book`, `/candles`,
`/volume-profile`, `/order-flow`, `/gaps` (the MCP tools call the same query functions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from marketflow.api import asset_queries, queries
from marketflow.api.app import context
from marketflow.api.keys import Scope
from marketflow.api.queries import parse_optional_time
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
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = queries.DEFAULT_CANDLES_LIMIT


class ProfileQuery(msgspec.Struct):
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    bin: Bin | None = None


class OrderFlowQuery(msgspec.Struct):
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    footprint: bool = False
    bin: Bin | None = None


class GapsQuery(msgspec.Struct):
    exchange: Exchange | None = None
    symbol: Symbol | None = None


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


# -- routes -------------------------------------------------------------------------------------------------


@blueprint.get("/collectors/trades")
@api(TradesOut, scope=Scope.READ, query=TradesQuery, errors=(400, 401, 403, 503))
async def trades(query_args: TradesQuery) -> dict[str, Any]:
    """Trades with since <= ts < until, newest first (recent from memory, older from storage)."""
    return await queries.recent_trades(
        context(),
        query_args.exchange,
        query_args.symbol,
        parse_optional_time(query_args.since, "since"),
        parse_optional_time(query_args.until, "until"),
        query_args.limit,
        query_args.market,
    )


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


def _range(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    return parse_optional_time(since, "since"), parse_optional_time(until, "until")


@blueprint.get("/candles")
@api(CandlesOut, scope=Scope.READ, query=CandlesQuery, errors=(400, 401, 403, 503))
async def candles(query_args: CandlesQuery) -> dict[str, Any]:
    """Candles starting in [since, until), oldest first; without since, the last `limit` up to until."""
    q = query_args
    if asset_queries.wants_asset(q.asset, q.exchange, q.symbol):
        return await asset_queries.asset_candles(
            context(), q.asset, q.markets, q.quotes, q.interval, *_range(q.since, q.until), q.limit
        )
    return await queries.candles(
        context(),
        q.exchange,
        q.symbol,
        q.interval,
        parse_optional_time(q.since, "since"),
        parse_optional_time(q.until, "until"),
        q.limit,
        q.market,
    )


@blueprint.get("/volume-profile")
@api(ProfileOut, scope=Scope.READ, query=ProfileQuery, errors=(400, 401, 403, 503))
async def volume_profile(query_args: ProfileQuery) -> dict[str, Any]:
    """Volume profile of trades with since <= ts < until (default: the last hour)."""
    q = query_args
    if asset_queries.wants_asset(q.asset, q.exchange, q.symbol):
        return await asset_queries.asset_volume_profile(
            context(), q.asset, q.markets, q.quotes, *_range(q.since, q.until), q.bin
        )
    return await queries.volume_profile(
        context(),
        q.exchange,
        q.symbol,
        parse_optional_time(q.since, "since"),
        parse_optional_time(q.until, "until"),
        queries.parse_bin(q.bin),
        q.market,
    )


@blueprint.get("/order-flow")
@api(OrderFlowOut, scope=Scope.READ, query=OrderFlowQuery, errors=(400, 401, 403, 503))
async def order_flow(query_args: OrderFlowQuery) -> dict[str, Any]:
    """Order flow per bar (delta, cvd, imbalance, large trades; footprint=true adds footprints)."""
    q = query_args
    if asset_queries.wants_asset(q.asset, q.exchange, q.symbol):
        return await asset_queries.asset_order_flow(
            context(), q.asset, q.markets, q.quotes, q.interval, *_range(q.since, q.until)
        )
    return await queries.order_flow(
        context(),
        q.exchange,
        q.symbol,
        q.interval,
        parse_optional_time(q.since, "since"),
        parse_optional_time(q.until, "until"),
        q.footprint,
        queries.parse_bin(q.bin),
        q.market,
    )


@blueprint.get("/gaps")
@api(GapsOut, scope=Scope.READ, query=GapsQuery, errors=(400, 401, 403))
async def gaps(query_args: GapsQuery) -> dict[str, Any]:
    """Recorded gaps (disconnects, book resyncs, trade-id gaps) and what was recovered, newest first."""
    return queries.gaps(context(), query_args.exchange, query_args.symbol)
