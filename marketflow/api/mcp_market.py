"""MCP tools of the SPEC §12 channels: `get_ticker`, `get_derivatives`, `get_liquidations`.

Registered into `mcp_tools.TOOLS` when `mcp_tools` imports this module (after its own market tools, so
`tools/list` shows them last); each calls the same `market_queries` function as its HTTP route, so its
`structuredContent` is that route's JSON and its `outputSchema` the route's documented response type.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketflow.api import asset_market_queries, asset_queries, market_queries
from marketflow.api.market_routes import DerivativesOut, LiquidationsOut, TickerOut
from marketflow.api.mcp_args import Asset, Exchange, Limit, Market, Markets, Quotes, Symbol, Time
from marketflow.api.mcp_tools import _times, tool
from marketflow.api.queries import QueryContext


class TickerArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange
    symbol: Symbol
    market: Market | None = None


class RowsArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = 100


def _sum_ticker(r: dict[str, Any], a: TickerArgs) -> str:
    if r["ts"] is None:
        return f"No ticker or derivatives data of {a.exchange} {a.symbol} yet."
    parts = [f"{r['exchange']} {r['symbol']} at {r['ts']}"]
    if r["bid"] is not None or r["ask"] is not None:
        parts.append(f"bid {r['bid']} x {r['bid_size']}, ask {r['ask']} x {r['ask_size']}")
    if r["last"] is not None:
        parts.append(f"last {r['last']}")
    if r["mark_price"] is not None:
        parts.append(f"mark {r['mark_price']}, index {r['index_price']}")
    if r["funding_rate"] is not None:
        parts.append(f"funding {r['funding_rate']} (next {r['next_funding_time']})")
    if r["open_interest"] is not None:
        parts.append(f"open interest {r['open_interest']}")
    return "; ".join(parts) + "."


@tool("Ticker and derivatives", TickerOut, _sum_ticker)
async def get_ticker(ctx: QueryContext, args: TickerArgs) -> dict[str, Any]:
    """The live ticker of one market: best bid and ask with sizes, last price, 24 h volume, and for
    perpetuals mark price, index price, funding rate, next_funding_time and open interest (contracts or
    base units, and its value). A field the venue does not give is null (ts null: nothing received yet;
    the market's feed needs the "ticker" or "derivatives" channel, see list_markets). {MARKET}"""
    return market_queries.ticker(ctx, args.exchange, args.symbol, args.market)


def _what(a: RowsArgs) -> str:
    return f"{a.asset} (all venues)" if a.asset is not None else f"{a.exchange} {a.symbol}"


def _sum_derivatives(r: dict[str, Any], a: RowsArgs) -> str:
    rows = r["rows"]
    if not rows:
        return f"No derivatives samples of {_what(a)} in the range."
    newest, oldest = rows[0], rows[-1]
    return (
        f"{len(rows)} derivatives samples of {_what(a)}, newest first, {oldest['ts']} to "
        f"{newest['ts']}: mark {newest['mark_price']}, funding {newest['funding_rate']}, open interest "
        f"{oldest['open_interest']} -> {newest['open_interest']}."
    )


@tool("Derivatives history", DerivativesOut, _sum_derivatives)
async def get_derivatives(ctx: QueryContext, args: RowsArgs) -> dict[str, Any]:
    """Sampled derivatives data of one perpetual with since <= ts < until, newest first: mark_price,
    index_price, funding_rate, next_funding_time, open_interest, open_interest_value (one row per sample
    interval in which something changed; null where the venue gives nothing). {MARKET}"""
    since, until = _times(args)
    if asset_queries.wants_asset(args.asset, args.exchange, args.symbol):
        return await asset_market_queries.asset_derivatives(
            ctx, args.asset, args.markets, args.quotes, since, until, args.limit
        )
    return await market_queries.derivatives(
        ctx, args.exchange, args.symbol, since, until, args.limit, args.market
    )


def _sum_liquidations(r: dict[str, Any], a: RowsArgs) -> str:
    rows = r["liquidations"]
    if not rows:
        return f"No liquidations of {_what(a)} in the range."
    sells = sum(1 for x in rows if x["side"] == "sell")
    return (
        f"{r['count']} liquidations of {_what(a)}, newest first, {rows[-1]['ts']} to "
        f"{rows[0]['ts']}: {sells} sells (longs closed), {len(rows) - sells} buys (shorts closed)."
    )


@tool("Liquidations", LiquidationsOut, _sum_liquidations)
async def get_liquidations(ctx: QueryContext, args: RowsArgs) -> dict[str, Any]:
    """Forced orders (liquidations) of one perpetual with since <= ts < until, newest first: side (of the
    forced order: sell closes a long, buy closes a short), price and amount as the venue sent them.
    Binance sends at most the latest liquidation per symbol per second. {MARKET}"""
    since, until = _times(args)
    if asset_queries.wants_asset(args.asset, args.exchange, args.symbol):
        return await asset_market_queries.asset_liquidations(
            ctx, args.asset, args.markets, args.quotes, since, until, args.limit
        )
    return await market_queries.liquidations(
        ctx, args.exchange, args.symbol, since, until, args.limit, args.market
    )
