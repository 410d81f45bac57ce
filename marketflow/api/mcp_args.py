"""The argument types of the MCP tools (msgspec Structs whose JSON Schemas are the tools' `inputSchema`),
and the results the HTTP routes have no documented type for."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from marketflow.api import queries
from marketflow.exchanges import VENUES, example_feed_name, markets_text

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
Asset = Annotated[
    str,
    Meta(
        description="Instead of exchange and symbol: one asset (BTC) on every configured market, volumes in "
        "base units, per-venue figures beside the totals."
    ),
]
Markets = Annotated[str, Meta(description='With asset: "spot", "perp" (contracts) or "all" (default).')]
Quotes = Annotated[
    str, Meta(description='With asset: quotes to include, default "USD,USDT,USDC" (counted as one dollar).')
]
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
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
    interval: Interval = "1m"
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    limit: Limit = 100


class ProfileArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
    market: Market | None = None
    since: Time | None = None
    until: Time | None = None
    bin: Bin | None = None


class OrderFlowArgs(msgspec.Struct, forbid_unknown_fields=True):
    exchange: Exchange | None = None
    symbol: Symbol | None = None
    asset: Asset | None = None
    markets: Markets | None = None
    quotes: Quotes | None = None
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
