"""OKX's public REST on the simulator (PROTOCOLS.md §8): `/api/v5/public/instruments`,
`/api/v5/market/history-trades` (individual fills, newest first, `after` = ids below) and
`/api/v5/market/books`; 20 requests per 2 s per path, then HTTP 429 code 50011.

`/api/v5/market/books` answers, while the instrument's `books` stream is live, with that stream's levels as
published and its `seqId` (what a client aligns the stream with, OKX's recipe for a stream without a
WebSocket snapshot); otherwise with the simulated book and no `seqId`."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from marketflow.sim.http import HttpRequest, HttpResponse, RestHandler
from marketflow.sim.market import (
    ROW_SEQ,
    Formats,
    Market,
)
from marketflow.sim.okx import EXCHANGE, INST_TYPES, _decimal_text, _encode, contract, fills
from marketflow.sim.okx_book import OkxBookStream, OkxRules

REST_LIMIT = 20
REST_WINDOW_S = 2.0
HISTORY_MAX = 100


class OkxRest:
    """OKX's REST routes on the simulator, each limited to 20 requests per 2 s."""

    def __init__(
        self,
        market: Market,
        book_source: Callable[[str, str, str], Any],
        rules: OkxRules,
    ) -> None:
        self.market = market
        self.book_source = book_source
        self.rules = rules
        self.requests = 0
        self.throttled = 0
        self._recent: dict[str, deque[float]] = {}

    def routes(self) -> dict[str, RestHandler]:
        return {
            "/api/v5/public/instruments": self._limited(self._instruments),
            "/api/v5/market/history-trades": self._limited(self._history_trades),
            "/api/v5/market/books": self._limited(self._books),
        }

    def _limited(self, handler: Callable[[HttpRequest], Any]) -> RestHandler:
        async def handle(request: HttpRequest) -> HttpResponse:
            self.requests += 1
            now = trio.current_time()
            recent = self._recent.setdefault(request.path, deque())
            while recent and recent[0] <= now - REST_WINDOW_S:
                recent.popleft()
            if len(recent) >= REST_LIMIT:
                self.throttled += 1
                return HttpResponse(
                    429, _encode.encode({"code": "50011", "msg": "Too Many Requests", "data": []})
                )
            recent.append(now)
            try:
                data = handler(request)
            except _ParamError as exc:
                return HttpResponse(400, _encode.encode({"code": exc.code, "msg": exc.msg, "data": []}))
            return HttpResponse(200, _encode.encode({"code": "0", "msg": "", "data": data}))

        return handle

    def _inst(self, request: HttpRequest) -> tuple[str, str]:
        values = request.query.get("instId")
        if not values:
            raise _ParamError("51000", "Parameter instId error")
        market = self.rules.instruments.get(values[0])
        if market is None:
            raise _ParamError("51001", "Instrument ID does not exist")
        return values[0], market

    def _instruments(self, request: HttpRequest) -> list[dict[str, str]]:
        kind = (request.query.get("instType") or [""])[0]
        wanted = {v: k for k, v in INST_TYPES.items()}.get(kind)
        if wanted is None:
            raise _ParamError("51000", "Parameter instType error")
        out = []
        for inst, market in self.rules.instruments.items():
            if market != wanted:
                continue
            spec = self.market.tape(market, inst, EXCHANGE).instrument
            row = {"instType": kind, "instId": inst, "state": "live"}
            row["tickSz"] = _decimal_text(spec.tick_decimals)
            row["lotSz"] = _decimal_text(spec.size_decimals)
            terms = contract(inst)
            if terms is None:
                row |= {"ctVal": "", "ctMult": "", "ctValCcy": "", "ctType": ""}
            else:
                row |= {"ctVal": terms[0], "ctMult": "1", "ctValCcy": terms[1], "ctType": terms[2]}
            out.append(row)
        return out

    def _history_trades(self, request: HttpRequest) -> list[dict[str, str]]:
        inst, market = self._inst(request)
        after_text = (request.query.get("after") or [""])[0]
        limit_text = (request.query.get("limit") or [str(HISTORY_MAX)])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= HISTORY_MAX:
            raise _ParamError("51000", "Parameter limit error")
        if after_text and not after_text.isdigit():
            raise _ParamError("51000", "Parameter after error")
        after = int(after_text) if after_text else None
        limit = int(limit_text)
        tape = self.market.tape(market, inst, EXCHANGE)
        out: list[dict[str, str]] = []
        for row in reversed(tape.history.rows()):
            if after is not None and row[ROW_SEQ] >= after:
                continue
            for trade_id, px, sz, side, ts in reversed(fills(row)):
                if after is not None and trade_id >= after:
                    continue
                out.append(
                    {
                        "instId": inst,
                        "side": side,
                        "sz": sz,
                        "px": px,
                        "tradeId": str(trade_id),
                        "ts": str(ts),
                    }
                )
                if len(out) >= limit:
                    return out
        return out

    def _books(self, request: HttpRequest) -> list[dict[str, Any]]:
        inst, market = self._inst(request)
        size_text = (request.query.get("sz") or ["1"])[0]
        if not size_text.isdigit() or not 1 <= int(size_text) <= 400:
            raise _ParamError("51000", "Parameter sz error")
        feed = self.book_source(EXCHANGE, market, inst)
        stream = feed.streams.get("books:" + inst)
        if isinstance(stream, OkxBookStream) and stream.active() and not self.rules.legacy_books:
            bid_text, ask_text, seq = stream.published(int(size_text))
            return [
                {
                    "asks": [[p, q, "0", "1"] for p, q in ask_text],
                    "bids": [[p, q, "0", "1"] for p, q in bid_text],
                    "ts": str(time.time_ns() // 1_000_000),
                    "seqId": seq,
                }
            ]
        book = feed.book
        formats = Formats(book.instrument)
        bids, asks = book.top(int(size_text))
        return [
            {
                "asks": [[formats.price(p), formats.size(q), "0", "1"] for p, q in asks],
                "bids": [[formats.price(p), formats.size(q), "0", "1"] for p, q in bids],
                "ts": str(time.time_ns() // 1_000_000),
            }
        ]


class _ParamError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
