"""Coinbase Advanced Trade public REST: recent trades to fill trade-id gaps, and the budget (§9.5).

`GET /api/v3/brokerage/market/products/{id}/ticker?limit=&start=&end=` returns the latest trades of a
product (newest first), optionally within a Unix-time window; it has no trade-id cursor. A gap's time window
(`since_ts` .. `until_ts`, widened to whole seconds) is asked for and the ids inside the gap kept; a window
holding more than `TICKER_LIMIT` trades is walked backwards by moving `end` to the oldest trade returned.
What the endpoint does not return (beyond `MAX_PAGES` pages, or trades it no longer serves) is not
recoverable here: the backfiller records how many of the gap's ids came back. The legacy Exchange API's
id cursor is not used (another host and API; §9.5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from marketflow.exchanges.base import Fetch, RestBudget, RestRequest, TradeGap
from marketflow.exchanges.coinbase.frames import Values
from marketflow.model import Trade, now_us

TICKER_PATH = "/api/v3/brokerage/market/products/{}/ticker"
TICKER_LIMIT = 1000
MAX_PAGES = 10
MAX_GAP = 10_000
BUDGET = RestBudget(10, 1.0)
"""About 10 public requests per second per IP (ccxt's notes, §9.5)."""
_TAKER: dict[str, Literal["buy", "sell"]] = {"BUY": "sell", "SELL": "buy"}


class _RestTrade(msgspec.Struct):
    trade_id: str
    price: str
    size: str
    side: str
    time: str


class _Ticker(msgspec.Struct):
    trades: list[_RestTrade]


def ticker_request(
    native: str, limit: int = TICKER_LIMIT, start_s: int | None = None, end_s: int | None = None
) -> RestRequest:
    params: dict[str, str | int] = {"limit": limit}
    if start_s is not None:
        params["start"] = str(start_s)
    if end_s is not None:
        params["end"] = str(end_s)
    return RestRequest(TICKER_PATH.format(native), params, 1)


def parse_ticker(body: bytes, exchange: str, symbol: str, recv_ts: int, values: Values) -> list[Trade]:
    """The ticker answer → trades, oldest id first; `side` is the maker's there too, stored inverted."""
    try:
        answer = msgspec.json.decode(body, type=_Ticker)
        rows = []
        for t in answer.trades:
            side = _TAKER.get(t.side)
            if side is None or not t.trade_id.isdigit():
                raise ValueError(f"coinbase ticker trade not understood: {t!r}")
            price = values.trade_value(t.price, "price")
            size = values.trade_value(t.size, "amount")
            ts = values.us(t.time)
            rows.append(Trade(exchange, symbol, t.trade_id, price, size, side, ts, recv_ts))
    except msgspec.DecodeError as exc:
        raise ValueError(f"coinbase ticker answer not understood: {exc}") from exc
    rows.sort(key=lambda t: int(t.id))
    return rows


async def fill_gap(gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
    """The trades with ids in `[gap.first_missing, gap.next_seen)` the ticker endpoint still returns."""
    values = Values()
    start_s = gap.since_ts // 1_000_000
    end_s = gap.until_ts // 1_000_000 + 1
    found: set[int] = set()
    wanted = gap.next_seen - gap.first_missing
    for _ in range(MAX_PAGES):
        body = await fetch(ticker_request(gap.native, TICKER_LIMIT, start_s, end_s))
        rows = parse_ticker(body, gap.exchange, gap.symbol, now_us(), values)
        page = [t for t in rows if gap.first_missing <= int(t.id) < gap.next_seen and int(t.id) not in found]
        if page:
            found.update(int(t.id) for t in page)
            yield page
        if len(found) >= wanted or len(rows) < TICKER_LIMIT or not page:
            return
        oldest = min(t.ts for t in rows) // 1_000_000
        if int(rows[0].id) <= gap.first_missing or oldest < start_s:
            return
        end_s = oldest + 1  # the same second again: ids already found are skipped


async def catch_up(native: str, symbol: str, exchange: str, fetch: Fetch) -> list[Trade]:
    """The latest trades of a product, oldest first (the contract's CATCH_UP form; unused by Coinbase,
    whose reconnects are recovered by trade id)."""
    return parse_ticker(await fetch(ticker_request(native)), exchange, symbol, now_us(), Values())
