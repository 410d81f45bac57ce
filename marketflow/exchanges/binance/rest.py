"""Binance REST: depth snapshots that seed books, aggregate trades that fill id gaps, and the weights.

Aggregate trade ids are contiguous per symbol, so a gap is fetched exactly: `GET /api/v3/aggTrades?fromId=`
(USD-M `/fapi/v1/aggTrades`), a page of 1000 at a time (PROTOCOLS §2.6, §3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec

from marketflow.exchanges.base import Decoded, Fetch, RestBudget, RestPoll, RestRequest, TradeGap
from marketflow.exchanges.binance.frames import EXCHANGE, AggTrade
from marketflow.exchanges.orderbook import check_levels
from marketflow.exchanges.trade_values import positive
from marketflow.model import BookUpdate, DerivativesTick, Level, Trade, now_us

AGG_TRADES_PAGE = 1000


def parse_rest_agg_trades(body: bytes, exchange: str, symbol: str, recv_ts: int) -> list[Trade]:
    """`GET /api/v3/aggTrades` (or `/fapi/v1/aggTrades`) → trades, oldest first; ValueError if not
    understood or a price or quantity is not a finite decimal above zero."""
    try:
        rows = msgspec.json.decode(body, type=list[AggTrade])
        return [
            Trade(
                exchange,
                symbol,
                str(t.a),
                positive(t.p, "price"),
                positive(t.q, "amount"),
                "sell" if t.m else "buy",
                t.T * 1000,
                recv_ts,
            )
            for t in rows
        ]
    except msgspec.DecodeError as exc:
        raise ValueError(f"binance aggTrades answer not understood: {exc}") from exc


class _RestDepth(msgspec.Struct):
    lastUpdateId: int
    bids: list[Level]
    asks: list[Level]
    E: int | None = None
    T: int | None = None


def parse_rest_depth(body: bytes, exchange: str, symbol: str, recv_ts: int) -> BookUpdate:
    """`GET /api/v3/depth` (or `/fapi/v1/depth`) → a snapshot `BookUpdate` with `lastUpdateId` as its ids."""
    try:
        d = msgspec.json.decode(body, type=_RestDepth)
        bids = check_levels(d.bids)
        asks = check_levels(d.asks)
    except msgspec.DecodeError as exc:
        raise ValueError(f"binance depth snapshot not understood: {exc}") from exc
    ts = (d.T or d.E or recv_ts // 1000) * 1000
    return BookUpdate(exchange, symbol, True, d.lastUpdateId, d.lastUpdateId, None, bids, asks, ts, recv_ts)


DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth"}
AGG_TRADES_PATH = {"spot": "/api/v3/aggTrades", "usdm": "/fapi/v1/aggTrades"}
# Snapshot limit and its request weight (PROTOCOLS §2.6, §3).
SNAPSHOT_LIMIT = {"spot": 1000, "usdm": 1000}
WEIGHT_PER_MINUTE = {"spot": 6000, "usdm": 2400}


def depth_weight(market: str, limit: int) -> int:
    if market == "spot":
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


AGG_TRADES_WEIGHT = {"spot": 4, "usdm": 20}


def depth_request(market: str, native: str) -> RestRequest:
    limit = SNAPSHOT_LIMIT[market]
    return RestRequest(DEPTH_PATH[market], {"symbol": native, "limit": limit}, depth_weight(market, limit))


def budget(market: str) -> RestBudget:
    return RestBudget(WEIGHT_PER_MINUTE[market], 60.0)


async def fill_gap(gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
    """The trades with ids in `[gap.first_missing, gap.next_seen)`, a page at a time."""
    cursor = gap.first_missing
    while cursor < gap.next_seen:
        request = RestRequest(
            AGG_TRADES_PATH[gap.market],
            {"symbol": gap.native, "fromId": cursor, "limit": AGG_TRADES_PAGE},
            AGG_TRADES_WEIGHT[gap.market],
        )
        rows = parse_rest_agg_trades(await fetch(request), gap.exchange, gap.symbol, now_us())
        if not rows:
            return
        wanted = [t for t in rows if gap.first_missing <= int(t.id) < gap.next_seen]
        if wanted:
            yield wanted
        cursor = int(rows[-1].id) + 1


OPEN_INTEREST_PATH = "/fapi/v1/openInterest"
OPEN_INTEREST_WEIGHT = 1
OPEN_INTEREST_INTERVAL_S = 10.0
"""Asked per symbol about this often; the poller stretches it to stay inside its share of the budget."""


class _OpenInterest(msgspec.Struct):
    openInterest: Decimal
    time: int


def open_interest_request(native: str) -> RestRequest:
    return RestRequest(OPEN_INTEREST_PATH, {"symbol": native}, OPEN_INTEREST_WEIGHT)


def parse_open_interest(body: bytes, symbol: str, recv_ts: int, out: Decoded) -> None:
    """`GET /fapi/v1/openInterest` -> a `DerivativesTick` with only `open_interest` (in base units)."""
    try:
        oi = msgspec.json.decode(body, type=_OpenInterest)
    except msgspec.DecodeError as exc:
        raise ValueError(f"binance openInterest answer not understood: {exc}") from exc
    if not oi.openInterest.is_finite():
        raise ValueError(f"binance openInterest is not a finite number: {oi.openInterest}")
    out.derivatives.append(
        DerivativesTick(EXCHANGE, symbol, oi.time * 1000, recv_ts, open_interest=oi.openInterest)
    )


OPEN_INTEREST_POLL = RestPoll(
    "derivatives", OPEN_INTEREST_INTERVAL_S, open_interest_request, parse_open_interest
)
"""USD-M open interest is REST only (no stream): the `derivatives` channel polls it."""
