"""OKX v5 public REST: instruments, history trades (backfill) and their budgets (PROTOCOLS.md §8.6).

Every answer is `{"code":"0","msg":"","data":[...]}`; a non-zero `code` raises `ValueError` naming it.
- `GET /api/v5/public/instruments?instType=SPOT|SWAP|FUTURES`: contract value, multiplier, currency,
  linear/inverse, tick and lot size. Sizes of SWAP/FUTURES trades and books are **contracts**.
- `GET /api/v5/market/history-trades?instId=&type=1&after=<tradeId>&limit=100`: trades with ids below
  `after`, newest first, 100 at most; 20 requests per 2 s per IP.
- `GET /api/v5/market/books?instId=&sz=400`: the book snapshot a `books` subscription is aligned with when
  OKX sends no WebSocket snapshot (its changelog's "Delist initial snapshot" recipe); `data[0]` carries
  `asks`, `bids` (`[px, sz, "0", numOrders]`), `ts` and the `seqId` the stream's chain is matched against
  (an answer without `seqId` cannot be aligned and is refused).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import attrs
import msgspec

from marketflow.exchanges.okx.frames import OkxBookUpdate, RawLevel
from marketflow.exchanges.okx.symbols import INST_TYPES
from marketflow.exchanges.trade_values import positive_decimal
from marketflow.model import Level, Trade

DEFAULT_REST = "https://www.okx.com"
INSTRUMENTS_PATH = "/api/v5/public/instruments"
HISTORY_TRADES_PATH = "/api/v5/market/history-trades"
BOOKS_PATH = "/api/v5/market/books"
BOOKS_DEPTH = 400
"""`sz` of the REST snapshot: the depth of the `books` channel."""
HISTORY_PAGE = 100
REST_LIMIT = 20
"""OKX's published limit per `REST_WINDOW_S` for history-trades and instruments (per IP); the daemon spends a
share of it."""
REST_WINDOW_S = 2.0


@attrs.frozen
class OkxInstrument:
    """What `/public/instruments` says about one instrument; the contract fields are None on spot."""

    inst_id: str
    inst_type: str
    tick_size: Decimal
    lot_size: Decimal
    contract_value: Decimal | None
    contract_multiplier: Decimal | None
    contract_currency: str | None
    contract_type: Literal["linear", "inverse"] | None
    state: str

    @property
    def inverse(self) -> bool:
        return self.contract_type == "inverse"

    @property
    def amount_unit(self) -> Literal["base", "contracts"]:
        return "base" if self.contract_value is None else "contracts"

    @property
    def value_per_contract(self) -> Decimal | None:
        """`ctVal × ctMult`: base units (linear) or quote units (inverse) one contract is worth."""
        if self.contract_value is None:
            return None
        return self.contract_value * (self.contract_multiplier or Decimal(1))


class _Envelope(msgspec.Struct):
    code: str
    msg: str = ""
    data: msgspec.Raw = msgspec.Raw(b"[]")


class _Instrument(msgspec.Struct):
    instId: str
    instType: str
    tickSz: str
    lotSz: str
    ctVal: str = ""
    ctMult: str = ""
    ctValCcy: str = ""
    ctType: str = ""
    state: str = "live"


class _HistoryTrade(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: Literal["buy", "sell"]
    ts: int


class _RestBook(msgspec.Struct):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: int
    seqId: int | None = None


_envelope = msgspec.json.Decoder(_Envelope)
_rest_books = msgspec.json.Decoder(list[_RestBook], strict=False)
_instruments = msgspec.json.Decoder(list[_Instrument])
_history = msgspec.json.Decoder(list[_HistoryTrade], strict=False)


def _data(body: bytes, what: str) -> msgspec.Raw:
    try:
        envelope = _envelope.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"okx {what} answer not understood: {exc}") from exc
    if envelope.code != "0":
        raise ValueError(f"okx {what} refused: code {envelope.code}: {envelope.msg}")
    return envelope.data


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ValueError(f"okx {what}: not a decimal: {text[:40]!r}") from None
    if not value.is_finite():
        raise ValueError(f"okx {what}: not a finite decimal: {text[:40]!r}")
    return value


def instruments_params(market: str) -> dict[str, str | int]:
    return {"instType": INST_TYPES[market]}


def parse_instruments(body: bytes) -> dict[str, OkxInstrument]:
    """`/public/instruments` → instId → instrument."""
    try:
        rows = _instruments.decode(_data(body, "instruments"))
    except msgspec.DecodeError as exc:
        raise ValueError(f"okx instruments answer not understood: {exc}") from exc
    out = {}
    for row in rows:
        what = f"instrument {row.instId}"
        contract = bool(row.ctVal)
        if contract and row.ctType not in ("linear", "inverse"):
            raise ValueError(f"okx {what}: ctType {row.ctType!r} is neither linear nor inverse")
        out[row.instId] = OkxInstrument(
            row.instId,
            row.instType,
            _decimal(row.tickSz, what),
            _decimal(row.lotSz, what),
            _decimal(row.ctVal, what) if contract else None,
            _decimal(row.ctMult or "1", what) if contract else None,
            row.ctValCcy or None if contract else None,
            "inverse" if row.ctType == "inverse" else "linear" if contract else None,
            row.state,
        )
    return out


def history_params(native: str, after: int) -> dict[str, str | int]:
    return {"instId": native, "type": 1, "after": after, "limit": HISTORY_PAGE}


def parse_history_trades(body: bytes, exchange: str, symbol: str, recv_ts: int) -> list[Trade]:
    """`/market/history-trades` → trades, newest first as OKX sends them; ValueError naming the trade and
    field when a price or size is not a finite decimal above zero."""
    try:
        rows = _history.decode(_data(body, "history-trades"))
    except msgspec.DecodeError as exc:
        raise ValueError(f"okx history-trades answer not understood: {exc}") from exc
    values: dict[str, Decimal] = {}
    out = []
    for row in rows:
        if not row.tradeId.isdigit():
            raise ValueError(f"okx history-trades: trade id not numeric: {row.tradeId[:40]!r}")
        try:
            price = values.get(row.px) or positive_decimal(values, row.px, "price")
            amount = values.get(row.sz) or positive_decimal(values, row.sz, "amount")
        except msgspec.DecodeError as exc:
            raise ValueError(f"okx history-trades: trade {row.tradeId}: {exc}") from None
        out.append(Trade(exchange, symbol, row.tradeId, price, amount, row.side, row.ts * 1000, recv_ts))
    return out


def books_params(native: str) -> dict[str, str | int]:
    return {"instId": native, "sz": BOOKS_DEPTH}


def parse_books(body: bytes, exchange: str, symbol: str, recv_ts: int) -> OkxBookUpdate:
    """`/market/books` → a snapshot whose `last_id` is the answer's `seqId`."""
    try:
        rows = _rest_books.decode(_data(body, "books"))
    except msgspec.DecodeError as exc:
        raise ValueError(f"okx books answer not understood: {exc}") from exc
    if len(rows) != 1:
        raise ValueError(f"okx books answer for {symbol} has {len(rows)} books, not 1")
    row = rows[0]
    if row.seqId is None:
        raise ValueError(f"okx books answer for {symbol} has no seqId: it cannot be aligned with the stream")
    return OkxBookUpdate(
        exchange,
        symbol,
        True,
        row.seqId,
        row.seqId,
        None,
        _book_levels(row.bids, f"books {symbol} bid"),
        _book_levels(row.asks, f"books {symbol} ask"),
        row.ts * 1000,
        recv_ts,
        None,
        [RawLevel(level[0], level[1]) for level in row.bids],  # lengths checked by _book_levels
        [RawLevel(level[0], level[1]) for level in row.asks],
    )


def _book_levels(raw: list[list[str]], what: str) -> list[Level]:
    out = []
    for level in raw:
        if len(level) < 2:
            raise ValueError(f"okx {what}: a level needs price and size, got {level[:4]!r}")
        price = _decimal(level[0], what)
        size = _decimal(level[1], what)
        if price <= 0 or size < 0:
            raise ValueError(f"okx {what}: price {level[0]!r} or size {level[1]!r} out of range")
        out.append((price, size))
    return out
