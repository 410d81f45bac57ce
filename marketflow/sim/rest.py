"""The simulator's REST endpoints: Binance depth snapshots and aggTrades, Bybit recent trades.

- Binance spot `GET /api/v3/depth` (limit 1..5000, default 100; more than 5000 is cut to 5000) and
  `GET /api/v3/aggTrades`; USD-M `GET /fapi/v1/depth` (limit 5/10/20/50/100/500/1000, default 500; adds
  `E`, `T`) and `GET /fapi/v1/aggTrades` (limit up to 1000, default 500).
- Bybit `GET /v5/market/recent-trade?category=spot|linear|inverse&symbol=&limit=` (spot 1..60, default 60;
  others 1..1000, default 500), newest first.

Depth snapshots are the simulator's true book (top `limit`) with its current `lastUpdateId`, or an older
state once when the `stale_snapshot` fault is armed. While a `cross_book` crossing is on the wire the
answer waits for its repair (one update), so a client resyncing because of it lands after it.

Trades come from each tape's bounded history, which holds the last `SimConfig.trade_history` trades
generated (delivered or not; default 3000, so every Bybit `limit` is served in full); `fromId` older than
the history starts at its oldest.

Binance request weight is counted per market per wall-clock minute and reported in
`X-MBX-USED-WEIGHT-1M` (spot also `x-mbx-used-weight`); above 6000 (spot) / 2400 (USD-M) the answer is
HTTP 429 with code -1003. Parameter errors are HTTP 400 with Binance's codes: -1100 (illegal characters),
-1102 (missing), -1121 (unknown symbol), -1130 (value out of range). Bybit answers errors with HTTP 200 and
`retCode` 10001.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from marketflow.sim.book import BookFeed, Levels
from marketflow.sim.derivs import open_interest_body
from marketflow.sim.http import HttpRequest, HttpResponse, RestHandler
from marketflow.sim.market import (
    ROW_ID,
    ROW_LAST,
    ROW_PRICE,
    ROW_SEQ,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Formats,
    Market,
    TradeRow,
)

WEIGHT_LIMITS = {"spot": 6000, "usdm": 2400}
SPOT_DEPTH_MAX = 5000
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
AGG_TRADES_MAX = 1000
BYBIT_LIMITS = {"spot": (60, 60), "linear": (1000, 500), "inverse": (1000, 500)}  # (max, default)
_SYMBOL = re.compile(r"[A-Z0-9\-_.]{1,20}")
_UNSIGNED = re.compile(r"[0-9]{1,20}")

BookSource = Callable[[str, str, str], BookFeed]
"""(exchange, category, symbol) → the feed of that book."""

_encode = msgspec.json.Encoder()


class ParamError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _param(request: HttpRequest, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _symbol(request: HttpRequest, symbols: frozenset[str]) -> str:
    symbol = _param(request, "symbol")
    if symbol is None:
        raise ParamError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    if not _SYMBOL.fullmatch(symbol):
        raise ParamError(
            -1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'."
        )
    if symbol not in symbols:
        raise ParamError(-1121, "Invalid symbol.")
    return symbol


def _int(request: HttpRequest, name: str) -> int | None:
    text = _param(request, name)
    if text is None:
        return None
    if not _UNSIGNED.fullmatch(text):
        raise ParamError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        )
    return int(text)


def _invalid(name: str) -> ParamError:
    return ParamError(-1130, f"Data sent for parameter '{name}' is not valid.")


def spot_depth_weight(limit: int) -> int:
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def usdm_depth_weight(limit: int) -> int:
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


def _format_levels(formats: Formats, levels: Levels) -> list[list[str]]:
    return [[formats.price(p), formats.size(q)] for p, q in levels]


class RestApi:
    """The REST routes of one simulator; `routes()` maps paths to handlers."""

    def __init__(self, market: Market, book_source: BookSource, symbols: frozenset[str]) -> None:
        self.market = market
        self.book_source = book_source
        self.symbols = symbols
        self.requests = 0
        self.throttled = 0
        self._weights: dict[str, tuple[int, int]] = {}  # market → (minute, weight used)
        self.open_interest_served: deque[dict[str, object]] = deque(maxlen=10_000)

    def routes(self) -> dict[str, RestHandler]:
        return {
            "/api/v3/depth": self._binance("spot", self._depth),
            "/api/v3/aggTrades": self._binance("spot", self._agg_trades),
            "/fapi/v1/depth": self._binance("usdm", self._depth),
            "/fapi/v1/aggTrades": self._binance("usdm", self._agg_trades),
            "/fapi/v1/openInterest": self._binance("usdm", self._open_interest),
            "/v5/market/recent-trade": self.recent_trade,
        }

    def used_weight(self, category: str) -> int:
        minute, used = self._weights.get(category, (0, 0))
        return used if minute == int(time.time() // 60) else 0

    def _charge(self, category: str, weight: int) -> int:
        minute = int(time.time() // 60)
        last, used = self._weights.get(category, (minute, 0))
        used = (used if last == minute else 0) + weight
        self._weights[category] = (minute, used)
        return used

    def _binance(
        self, category: str, handler: Callable[[str, HttpRequest], Awaitable[tuple[Any, int]]]
    ) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
        async def handle(request: HttpRequest) -> HttpResponse:
            self.requests += 1
            status = 200
            try:
                body, weight = await handler(category, request)
            except ParamError as exc:
                body, weight, status = {"code": exc.code, "msg": exc.msg}, 1, 400
            used = self._charge(category, weight)
            limit = WEIGHT_LIMITS[category]
            headers: tuple[tuple[str, str], ...] = (("X-MBX-USED-WEIGHT-1M", str(used)),)
            if category == "spot":
                headers = (("x-mbx-used-weight", str(used)), ("x-mbx-used-weight-1m", str(used)))
            if used > limit:
                self.throttled += 1
                retry = str(60 - int(time.time()) % 60)
                msg = (
                    f"Too many requests; current limit of IP(127.0.0.1) is {limit} requests per minute. "
                    "Please use the websocket for live updates to avoid polling the API."
                )
                return HttpResponse(
                    429,
                    _encode.encode({"code": -1003, "msg": msg}),
                    headers=(*headers, ("Retry-After", retry)),
                )
            return HttpResponse(status, _encode.encode(body), headers=headers)

        return handle

    async def _depth(self, category: str, request: HttpRequest) -> tuple[Any, int]:
        symbol = _symbol(request, self.symbols)
        limit = _int(request, "limit")
        if category == "spot":
            limit = 100 if limit is None else limit
            if limit < 1:
                raise _invalid("limit")
            limit = min(limit, SPOT_DEPTH_MAX)
            weight = spot_depth_weight(limit)
        else:
            limit = 500 if limit is None else limit
            if limit not in USDM_DEPTH_LIMITS:
                raise _invalid("limit")
            weight = usdm_depth_weight(limit)
        feed = self.book_source("binance", category, symbol)
        await feed.wait_uncrossed()
        book = feed.book
        if book.stale_next:
            bids, asks, last_id = book.state_back(book.stale_next, limit)
            book.stale_next = 0
        else:
            bids, asks = book.top(limit)
            last_id = book.last_id
        formats = Formats(book.instrument)
        body: dict[str, Any] = {"lastUpdateId": last_id}
        if category == "usdm":
            now = time.time_ns() // 1_000_000
            body |= {"E": now, "T": now - 1}
        body |= {"bids": _format_levels(formats, bids), "asks": _format_levels(formats, asks)}
        return body, weight

    async def _open_interest(self, category: str, request: HttpRequest) -> tuple[Any, int]:
        """`GET /fapi/v1/openInterest?symbol=` (weight 1): the book's open interest now."""
        symbol = _symbol(request, self.symbols)
        book = self.book_source("binance", category, symbol).book
        body = open_interest_body(book, time.time_ns() // 1_000_000)
        self.open_interest_served.append(body)
        return body, 1

    async def _agg_trades(self, category: str, request: HttpRequest) -> tuple[Any, int]:
        weight = 4 if category == "spot" else 20
        symbol = _symbol(request, self.symbols)
        limit = _int(request, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= AGG_TRADES_MAX:
            raise _invalid("limit")
        from_id = _int(request, "fromId")
        start = _int(request, "startTime")
        end = _int(request, "endTime")
        history = self.market.tape(category, symbol, "binance").history
        rows: list[TradeRow]
        if from_id is not None:
            oldest = history.rows(0, 1)
            index = max(0, from_id - int(oldest[0][ROW_ID])) if oldest else 0
            rows = history.rows(index, index + limit)
        elif start is not None or end is not None:
            low = start if start is not None else 0
            high = end if end is not None else 2**63
            rows = [r for r in history.rows() if low <= r[ROW_T] <= high][:limit]
        else:
            rows = history.latest(limit)
        spot = category == "spot"
        out = []
        for r in rows:
            item: dict[str, Any] = {
                "a": int(r[ROW_ID]),
                "p": r[ROW_PRICE],
                "q": r[ROW_SIZE],
                "f": r[ROW_SEQ],
                "l": r[ROW_LAST],
                "T": r[ROW_T],
                "m": r[ROW_SIDE] == "Sell",
            }
            if spot:
                item["M"] = True
            out.append(item)
        return out, weight

    async def recent_trade(self, request: HttpRequest) -> HttpResponse:
        self.requests += 1
        now = time.time_ns() // 1_000_000
        category = _param(request, "category")
        symbol = _param(request, "symbol")
        limits = BYBIT_LIMITS.get(category or "")
        problem = None
        if category is None or limits is None:
            problem = "Illegal category"
        elif symbol is None:
            problem = "params error: symbol is required"
        elif symbol not in self.symbols:
            problem = "Not supported symbols"
        if problem is not None or category is None or limits is None or symbol is None:
            return self._bybit_error(problem or "", now)
        limit_text = _param(request, "limit")
        maximum, limit = limits
        if limit_text is not None:
            if not _UNSIGNED.fullmatch(limit_text) or not 1 <= int(limit_text) <= maximum:
                return self._bybit_error(f"params error: limit must be between 1 and {maximum}", now)
            limit = int(limit_text)
        tape = self.market.tape(category, symbol)
        rows = tape.history.latest(limit)[::-1]
        listing = [
            {
                "execId": r[ROW_ID],
                "symbol": symbol,
                "price": r[ROW_PRICE],
                "size": r[ROW_SIZE],
                "side": r[ROW_SIDE],
                "time": str(r[ROW_T]),
                "isBlockTrade": False,
                "isRPITrade": False,
                "seq": str(r[ROW_SEQ]),
            }
            for r in rows
        ]
        body = {
            "retCode": 0,
            "retMsg": "OK",
            "result": {"category": category, "list": listing},
            "retExtInfo": {},
            "time": now,
        }
        return HttpResponse(200, _encode.encode(body))

    @staticmethod
    def _bybit_error(msg: str, now: int) -> HttpResponse:
        body = {"retCode": 10001, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now}
        return HttpResponse(200, _encode.encode(body))


__all__ = [
    "USDM_DEPTH_LIMITS",
    "WEIGHT_LIMITS",
    "BookSource",
    "RestApi",
    "spot_depth_weight",
    "usdm_depth_weight",
]
