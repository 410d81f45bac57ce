"""Bybit v5 REST: recent trades for the catch-up after a reconnect (PROTOCOLS.md §1), and the budget.

Bybit ids carry no order, so there is no id gap to fetch: after a reconnect `GET /v5/market/recent-trade`
returns the latest trades and the feed's decoder admits those it has not seen (`FrameDecoder.admit_backfill`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import RestBudget, RestRequest
from marketflow.exchanges.trade_values import positive
from marketflow.model import Trade

RECENT_TRADE_PATH = "/v5/market/recent-trade"
RECENT_TRADE_LIMIT = {"spot": 60, "linear": 1000}
# Requests per minute we count Bybit's public REST limit as (every request weighs 1).
REQUESTS_PER_MINUTE = 600
BUDGET = RestBudget(REQUESTS_PER_MINUTE, 60.0)
_SIDES: dict[str, Literal["buy", "sell"]] = {"Buy": "buy", "Sell": "sell"}


def recent_trades_request(market: str, native: str) -> RestRequest:
    return RestRequest(
        RECENT_TRADE_PATH, {"category": market, "symbol": native, "limit": RECENT_TRADE_LIMIT[market]}, 1
    )


class _RestTrade(msgspec.Struct):
    execId: str
    price: Decimal
    size: Decimal
    side: Literal["Buy", "Sell"]
    time: str


class _RestTrades(msgspec.Struct):
    items: list[_RestTrade] = msgspec.field(name="list")


class _RestResponse(msgspec.Struct):
    retCode: int
    retMsg: str
    result: msgspec.Raw = msgspec.Raw(b"null")


def parse_recent_trades(body: bytes, exchange: str, symbol: str, recv_ts: int) -> list[Trade]:
    """`GET /v5/market/recent-trade` → trades, oldest first. A non-zero `retCode`, or a trade whose price or
    size is not a finite decimal above zero, raises ValueError."""
    try:
        response = msgspec.json.decode(body, type=_RestResponse)
        if response.retCode != 0:
            raise ValueError(f"bybit recent-trade refused: retCode {response.retCode}: {response.retMsg}")
        result = msgspec.json.decode(response.result, type=_RestTrades)
        trades = [
            Trade(
                exchange,
                symbol,
                t.execId,
                positive(t.price, "price"),
                positive(t.size, "amount"),
                _SIDES[t.side],
                int(t.time) * 1000,
                recv_ts,
            )
            for t in result.items
        ]
    except msgspec.DecodeError as exc:
        raise ValueError(f"bybit recent-trade answer not understood: {exc}") from exc
    trades.reverse()
    return trades
