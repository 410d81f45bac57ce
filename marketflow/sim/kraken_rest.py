"""Kraken's public REST on the simulator (PROTOCOLS.md §10.6): `/0/public/Trades` and `/0/public/AssetPairs`.

- `Trades?pair=&since=&count=`: rows `[price, volume, time, "b"|"s", "m"|"l", "", trade_id]` of the pair's
  tape after `since` (ns, exclusive), oldest first, at most `count` (1-1000), and `last` (ns) for the
  next page; the pair may be named by its v2 name, altname (`XBTUSD`) or REST key (`XXBTZUSD`).
- `AssetPairs?pair=A,B` (all without `pair`): `altname`, `wsname` (`XBT/USD`), `pair_decimals`,
  `lot_decimals`, `tick_size` from the pair's instrument.
- Limit: a burst of 15 calls, refilled one per second; beyond it HTTP 429 `EAPI:Rate limit exceeded`.
Errors in the request come back as HTTP 200 with an `error` list, as Kraken answers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio

from marketflow.sim.http import HttpRequest, HttpResponse, RestHandler
from marketflow.sim.market import ROW_ID, ROW_PRICE, ROW_SIDE, ROW_SIZE, ROW_T, Market

EXCHANGE = "kraken"
SPOT = "spot"
TRADES_MAX = 1000
REST_BURST = 15
REST_REFILL_PER_S = 1.0
_REST_SIDES = {"Buy": "b", "Sell": "s"}
_LEGACY = {"BTC": "XBT", "DOGE": "XDG"}
_LEGACY_KEYS = {"BTC/USD": "XXBTZUSD", "BTC/EUR": "XXBTZEUR", "ETH/USD": "XETHZUSD", "ETH/EUR": "XETHZEUR"}
_encode = msgspec.json.Encoder()


def altname(native: str) -> str:
    """REST altname of a v2 pair: `BTC/USD` → `XBTUSD`."""
    base, quote = native.split("/")
    return _LEGACY.get(base, base) + _LEGACY.get(quote, quote)


def _decimal_text(decimals: int) -> str:
    return "1" if decimals <= 0 else "0." + "0" * (decimals - 1) + "1"


class KrakenRest:
    """Kraken's public REST routes on the simulator: a burst of 15, refilled one call per second."""

    def __init__(self, market: Market, listed: frozenset[str]) -> None:
        self.market = market
        self.listed = listed
        self.requests = 0
        self.throttled = 0
        self._tokens = float(REST_BURST)
        self._at: float | None = None
        self._by_name = {}
        for native in listed:
            for name in (native, altname(native), _LEGACY_KEYS.get(native, altname(native))):
                self._by_name[name] = native

    def routes(self) -> dict[str, RestHandler]:
        return {
            "/0/public/Trades": self._limited(self._trades),
            "/0/public/AssetPairs": self._limited(self._asset_pairs),
        }

    def _limited(self, handler: Callable[[HttpRequest], bytes]) -> RestHandler:
        async def handle(request: HttpRequest) -> HttpResponse:
            self.requests += 1
            now = trio.current_time()
            if self._at is not None:
                self._tokens = min(REST_BURST, self._tokens + (now - self._at) * REST_REFILL_PER_S)
            self._at = now
            if self._tokens < 1:
                self.throttled += 1
                return HttpResponse(429, b'{"error":["EAPI:Rate limit exceeded"]}')
            self._tokens -= 1
            try:
                result = handler(request)
            except _ParamError as exc:
                return HttpResponse(200, _encode.encode({"error": [str(exc)]}))
            return HttpResponse(200, b'{"error":[],"result":' + result + b"}")

        return handle

    def _pair(self, request: HttpRequest) -> str:
        name = (request.query.get("pair") or [""])[0]
        native = self._by_name.get(name.upper())
        if native is None:
            raise _ParamError("EQuery:Unknown asset pair")
        return native

    def _trades(self, request: HttpRequest) -> bytes:
        native = self._pair(request)
        since_text = (request.query.get("since") or ["0"])[0]
        count_text = (request.query.get("count") or [str(TRADES_MAX)])[0]
        if not since_text.isdigit():
            raise _ParamError("EGeneral:Invalid arguments:since")
        if not count_text.isdigit() or not 1 <= int(count_text) <= TRADES_MAX:
            raise _ParamError("EGeneral:Invalid arguments:count")
        since, count = int(since_text), int(count_text)
        tape = self.market.find_tape(EXCHANGE, SPOT, native)
        rows = (
            [] if tape is None else [r for r in tape.history.rows() if r[ROW_T] * 1_000_000 > since][:count]
        )
        body = ",".join(
            '["%s","%s",%d.%03d000,"%s","%s","",%s]'  # noqa: UP031
            % (
                r[ROW_PRICE],
                r[ROW_SIZE],
                r[ROW_T] // 1000,
                r[ROW_T] % 1000,
                _REST_SIDES[r[ROW_SIDE]],
                "l" if r[ROW_T] % 3 == 0 else "m",
                r[ROW_ID],
            )
            for r in rows
        )
        last = rows[-1][ROW_T] * 1_000_000 if rows else since
        key = _LEGACY_KEYS.get(native, altname(native))
        return ('{"%s":[%s],"last":"%d"}' % (key, body, last)).encode()  # noqa: UP031

    def _asset_pairs(self, request: HttpRequest) -> bytes:
        wanted = (request.query.get("pair") or [""])[0]
        natives = sorted(self.listed)
        if wanted:
            natives = []
            for name in wanted.split(","):
                native = self._by_name.get(name.upper())
                if native is None:
                    raise _ParamError("EQuery:Unknown asset pair")
                natives.append(native)
        out: dict[str, Any] = {}
        for native in natives:
            spec = self.market.tape(SPOT, native, EXCHANGE).instrument
            base, quote = native.split("/")
            ws_base, ws_quote = _LEGACY.get(base, base), _LEGACY.get(quote, quote)
            out[_LEGACY_KEYS.get(native, altname(native))] = {
                "altname": altname(native),
                "wsname": f"{ws_base}/{ws_quote}",
                "base": ws_base,
                "quote": ws_quote,
                "pair_decimals": spec.tick_decimals,
                "lot_decimals": spec.size_decimals,
                "tick_size": _decimal_text(spec.tick_decimals),
                "ordermin": "0.0001",
                "status": "online",
            }
        return _encode.encode(out)


class _ParamError(Exception):
    pass


__all__ = ["KrakenRest", "altname"]
