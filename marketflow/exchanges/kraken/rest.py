"""Kraken public REST (PROTOCOLS.md §10.6): trade backfill by id and pair precisions.

- `GET /0/public/Trades?pair=XBTUSD&since=<ns>&count=1000`: rows `[price, volume, time, "b"|"s", "m"|"l",
  misc, trade_id]` oldest first, and `last` (a nanosecond time) to pass as the next `since`. Trade ids are
  the same per-pair sequence the WebSocket `trade` channel carries, so an id gap is fetched exactly.
- `GET /0/public/AssetPairs?pair=A,B`: `wsname`, `pair_decimals`, `lot_decimals`, `tick_size`.
- Budget: about one public call per second per IP is safe (Trades is limited per IP and pair).
Errors come back as HTTP 200 with a non-empty `error` list: those raise ValueError.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import attrs
import msgspec

from marketflow.exchanges.base import RestBudget, RestRequest
from marketflow.exchanges.kraken.symbols import rest_pair, to_native
from marketflow.exchanges.trade_values import positive_decimal
from marketflow.model import Trade

DEFAULT_REST = "https://api.kraken.com"
TRADES_PATH = "/0/public/Trades"
ASSET_PAIRS_PATH = "/0/public/AssetPairs"
TRADES_PAGE = 1000
BUDGET = RestBudget(1, 1.0)
_SIDES: dict[str, Literal["buy", "sell"]] = {"b": "buy", "s": "sell"}


class _Response(msgspec.Struct):
    error: list[str] = []
    result: msgspec.Raw = msgspec.Raw(b"null")


_response_decoder = msgspec.json.Decoder(_Response)
_RestTradeRow = tuple[str, str, Decimal, str, str, str, int]
_trades_decoder = msgspec.json.Decoder(dict[str, list[_RestTradeRow] | str])


def _result(body: bytes, what: str) -> msgspec.Raw:
    try:
        response = _response_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"kraken {what} answer not understood: {exc}") from exc
    if response.error:
        raise ValueError(f"kraken {what} refused: {'; '.join(response.error)}")
    return response.result


def trades_request(native: str, since_ns: int) -> RestRequest:
    return RestRequest(TRADES_PATH, {"pair": rest_pair(native), "since": since_ns, "count": TRADES_PAGE})


@attrs.frozen
class TradesPage:
    trades: list[Trade]
    last: int
    """The `since` of the next page (ns)."""


def parse_trades(body: bytes, exchange: str, symbol: str, recv_ts: int) -> TradesPage:
    """`/0/public/Trades` → the page's trades (oldest first) and its `last` cursor; ValueError if not
    understood or a price or volume is not a finite decimal above zero. Prices and amounts are strings
    exactly as sent; the time (seconds, a JSON number) is read exactly as a decimal and kept to the µs."""
    result = _result(body, "Trades")
    try:
        payload = _trades_decoder.decode(result)
        last_text = payload.get("last")
        rows = next((v for k, v in payload.items() if k != "last" and isinstance(v, list)), [])
        if not isinstance(last_text, str) or not last_text.isdigit():
            raise ValueError(f"kraken Trades answer has no usable `last`: {last_text!r}")
        values: dict[str, Decimal] = {}
        trades = [
            Trade(
                exchange,
                symbol,
                str(row[6]),
                values.get(row[0]) or positive_decimal(values, row[0], "price"),
                values.get(row[1]) or positive_decimal(values, row[1], "amount"),
                _SIDES[row[3]],
                int(row[2].scaleb(6)),
                recv_ts,
            )
            for row in rows
        ]
    except (msgspec.DecodeError, ArithmeticError, KeyError) as exc:
        raise ValueError(f"kraken Trades answer not understood: {exc!r}") from exc
    return TradesPage(trades, int(last_text))


@attrs.frozen
class PairInfo:
    native: str
    price_precision: int
    qty_precision: int
    tick_size: Decimal
    lot_size: Decimal


class _AssetPair(msgspec.Struct):
    pair_decimals: int
    lot_decimals: int
    wsname: str | None = None
    altname: str | None = None
    tick_size: Decimal | None = None


_pairs_decoder = msgspec.json.Decoder(dict[str, _AssetPair])


def asset_pairs_request(natives: list[str]) -> RestRequest:
    return RestRequest(ASSET_PAIRS_PATH, {"pair": ",".join(rest_pair(n) for n in natives)})


def parse_asset_pairs(body: bytes) -> dict[str, PairInfo]:
    """`/0/public/AssetPairs` → v2 native (`BTC/USD`, from `wsname` with XBT → BTC) → precisions."""
    result = _result(body, "AssetPairs")
    try:
        pairs = _pairs_decoder.decode(result)
    except msgspec.DecodeError as exc:
        raise ValueError(f"kraken AssetPairs answer not understood: {exc}") from exc
    out = {}
    for key, pair in pairs.items():
        native = to_native(pair.wsname or pair.altname or key)
        tick = pair.tick_size if pair.tick_size is not None else Decimal(1).scaleb(-pair.pair_decimals)
        out[native] = PairInfo(
            native, pair.pair_decimals, pair.lot_decimals, tick, Decimal(1).scaleb(-pair.lot_decimals)
        )
    return out
