"""Payloads of the kinds `ticker`, `derivatives`, `liquidations` and `candles` (docs/NATS.md, "Payloads").

Like trades: JSON, one symbol per message, decimals as the exchange's exact strings, times in µs. Each
message is readable alone: a ticker or derivatives message carries the symbol's whole merged state (every
field, null where the venue gives none), not a delta, so a reader joining late needs no history.

- `ticker`: the merged ticker state, and the best bid/ask changes since the collector's previous message
  (`quotes`: the rows of the `quotes` table, present when the collector has `store_quotes`).
- `derivatives`: the merged state, and the samples closed since the previous message (`samples`: the rows
  of the `derivatives` table, one per symbol per `sample_interval_s` in which a field changed).
- `liquidations`: forced orders, one a message, its `Nats-Msg-Id` the liquidation's identity.
- `candles`: closed (or corrected) candles of one symbol, published by serve daemons.

The collector derives `quotes` and `samples` itself (the single-process code, on every record in order),
so store daemons, which share one consumer and each see only some messages, stay stateless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec

from marketflow.analytics.candles import Candle
from marketflow.model import DerivativesTick, Liquidation, Side, Ticker
from marketflow.nats.schema import VERSION, PayloadError
from marketflow.pipeline.market_data import Quote

MARKET_KINDS: Final = ("ticker", "derivatives", "liquidations")
"""Kinds of the market-data stream (collected, stored by the store role)."""


class TickerState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    ts: int
    recv_ts: int
    bid: Decimal | None
    bid_size: Decimal | None
    ask: Decimal | None
    ask_size: Decimal | None
    last: Decimal | None
    volume_24h: Decimal | None


class QuoteRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    ts: int
    bid: Decimal | None
    bid_size: Decimal | None
    ask: Decimal | None
    ask_size: Decimal | None


class DerivativesRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    ts: int
    recv_ts: int
    mark_price: Decimal | None
    index_price: Decimal | None
    funding_rate: Decimal | None
    next_funding_time: int | None
    open_interest: Decimal | None
    open_interest_value: Decimal | None


class LiquidationRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    id: str
    side: Side
    price: Decimal
    amount: Decimal
    ts: int
    recv_ts: int


class CandleRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    interval: str
    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    trades: int
    vwap: Decimal


class TickerMessage(msgspec.Struct, frozen=True, gc=False):
    v: int
    exchange: str
    symbol: str
    ticker: TickerState
    quotes: list[QuoteRow]


class DerivativesMessage(msgspec.Struct, frozen=True, gc=False):
    v: int
    exchange: str
    symbol: str
    state: DerivativesRow
    samples: list[DerivativesRow]


class LiquidationsMessage(msgspec.Struct, frozen=True, gc=False):
    v: int
    exchange: str
    symbol: str
    liquidations: list[LiquidationRow]


class CandlesMessage(msgspec.Struct, frozen=True, gc=False):
    v: int
    exchange: str
    symbol: str
    candles: list[CandleRow]


class TickerUpdate(msgspec.Struct, frozen=True, gc=False):
    """A decoded ticker message: the merged state (a snapshot `Ticker`) and the quote rows it carries."""

    ticker: Ticker
    quotes: list[Quote]


class DerivativesUpdate(msgspec.Struct, frozen=True, gc=False):
    """A decoded derivatives message: the merged state and the samples (snapshot `DerivativesTick`s)."""

    state: DerivativesTick
    samples: list[DerivativesTick]


MarketUpdate = TickerUpdate | DerivativesUpdate | list[Liquidation]

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoders: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "ticker": msgspec.json.Decoder(TickerMessage),
    "derivatives": msgspec.json.Decoder(DerivativesMessage),
    "liquidations": msgspec.json.Decoder(LiquidationsMessage),
    "candles": msgspec.json.Decoder(CandlesMessage),
}


def _digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=12).hexdigest()


# -- encoding (collect and serve roles) ------------------------------------------------------------------


def _derivatives_row(d: DerivativesTick) -> DerivativesRow:
    return DerivativesRow(
        d.ts,
        d.recv_ts,
        d.mark_price,
        d.index_price,
        d.funding_rate,
        d.next_funding_time,
        d.open_interest,
        d.open_interest_value,
    )


def pack_ticker(state: Ticker, quotes: Sequence[Quote]) -> tuple[bytes, str]:
    """(payload, message id) of a symbol's merged ticker state and its quote changes since the last one."""
    payload = _encoder.encode(
        TickerMessage(
            VERSION,
            state.exchange,
            state.symbol,
            TickerState(
                state.ts,
                state.recv_ts,
                state.bid,
                state.bid_size,
                state.ask,
                state.ask_size,
                state.last,
                state.volume_24h,
            ),
            [QuoteRow(q.ts, q.bid, q.bid_size, q.ask, q.ask_size) for q in quotes],
        )
    )
    return payload, f"ticker.{state.exchange}.{state.symbol}.{_digest(payload)}"


def pack_derivatives(state: DerivativesTick, samples: Sequence[DerivativesTick]) -> tuple[bytes, str]:
    """(payload, message id) of a symbol's merged derivatives state and the samples closed since."""
    payload = _encoder.encode(
        DerivativesMessage(
            VERSION,
            state.exchange,
            state.symbol,
            _derivatives_row(state),
            [_derivatives_row(s) for s in samples],
        )
    )
    return payload, f"derivatives.{state.exchange}.{state.symbol}.{_digest(payload)}"


def pack_liquidation(liq: Liquidation) -> tuple[bytes, str]:
    """(payload, message id) of one liquidation; the id is its identity, so the same forced order from two
    collectors (a hot pair) or sent twice is kept once by JetStream."""
    row = LiquidationRow(liq.id, liq.side, liq.price, liq.amount, liq.ts, liq.recv_ts)
    payload = _encoder.encode(LiquidationsMessage(VERSION, liq.exchange, liq.symbol, [row]))
    return payload, f"liquidations.{liq.exchange}.{liq.symbol}.{liq.id}"


def pack_candle(c: Candle) -> tuple[bytes, str]:
    """(payload, message id) of one closed candle: `exchange.symbol.interval.start` and its content, so the
    same candle from several serve daemons is kept once and a corrected one (more trades) is not dropped."""
    row = CandleRow(
        c.interval,
        c.start,
        c.open,
        c.high,
        c.low,
        c.close,
        c.volume,
        c.buy_volume,
        c.sell_volume,
        c.trades,
        c.vwap,
    )
    payload = _encoder.encode(CandlesMessage(VERSION, c.exchange, c.symbol, [row]))
    return payload, f"candles.{c.exchange}.{c.symbol}.{c.interval}.{c.start}.{_digest(payload)}"


# -- decoding (store and serve roles, the client) --------------------------------------------------------


def _finite(where: str, *values: Decimal | None) -> None:
    for value in values:
        if value is not None and not value.is_finite():
            raise PayloadError(f"{where}: {value} is not a finite decimal")


def _positive(where: str, *values: Decimal) -> None:
    for value in values:
        if not value > 0:
            raise PayloadError(f"{where}: {value} must be > 0")


def _decode(
    kind: str, payload: bytes, subject_key: tuple[str, str] | None
) -> TickerMessage | DerivativesMessage | LiquidationsMessage | CandlesMessage:
    try:
        msg: TickerMessage | DerivativesMessage | LiquidationsMessage | CandlesMessage = _decoders[
            kind
        ].decode(payload)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"not a {kind} message: {exc}") from None
    if msg.v != VERSION:
        raise PayloadError(f"{kind} message version {msg.v}; this marketflow reads version {VERSION}")
    if subject_key is not None and (msg.exchange, msg.symbol) != subject_key:
        raise PayloadError(
            f"{kind} message of {msg.exchange} {msg.symbol} on the subject of "
            f"{subject_key[0]} {subject_key[1]}"
        )
    return msg


def unpack_ticker(payload: bytes, subject_key: tuple[str, str] | None = None) -> TickerUpdate:
    msg = _decode("ticker", payload, subject_key)
    assert isinstance(msg, TickerMessage)
    s = msg.ticker
    _finite("ticker", s.bid, s.bid_size, s.ask, s.ask_size, s.last, s.volume_24h)
    for q in msg.quotes:
        _finite("quote", q.bid, q.bid_size, q.ask, q.ask_size)
    ex, sym = msg.exchange, msg.symbol
    state = Ticker(ex, sym, s.ts, s.recv_ts, s.bid, s.bid_size, s.ask, s.ask_size, s.last, s.volume_24h, True)
    quotes = [Quote(ex, sym, q.ts, q.bid, q.bid_size, q.ask, q.ask_size) for q in msg.quotes]
    return TickerUpdate(state, quotes)


def _tick(ex: str, sym: str, r: DerivativesRow) -> DerivativesTick:
    _finite("derivatives", r.mark_price, r.index_price, r.funding_rate)
    _finite("derivatives", r.open_interest, r.open_interest_value)
    return DerivativesTick(
        ex,
        sym,
        r.ts,
        r.recv_ts,
        r.mark_price,
        r.index_price,
        r.funding_rate,
        r.next_funding_time,
        r.open_interest,
        r.open_interest_value,
        snapshot=True,
    )


def unpack_derivatives(payload: bytes, subject_key: tuple[str, str] | None = None) -> DerivativesUpdate:
    msg = _decode("derivatives", payload, subject_key)
    assert isinstance(msg, DerivativesMessage)
    ex, sym = msg.exchange, msg.symbol
    return DerivativesUpdate(_tick(ex, sym, msg.state), [_tick(ex, sym, r) for r in msg.samples])


def unpack_liquidations(payload: bytes, subject_key: tuple[str, str] | None = None) -> list[Liquidation]:
    msg = _decode("liquidations", payload, subject_key)
    assert isinstance(msg, LiquidationsMessage)
    out = []
    for r in msg.liquidations:
        if not r.id:
            raise PayloadError("liquidation without an id")
        _finite("liquidation", r.price, r.amount)
        _positive("liquidation", r.price, r.amount)
        out.append(Liquidation(msg.exchange, msg.symbol, r.id, r.side, r.price, r.amount, r.ts, r.recv_ts))
    return out


def unpack_candles(payload: bytes, subject_key: tuple[str, str] | None = None) -> list[Candle]:
    msg = _decode("candles", payload, subject_key)
    assert isinstance(msg, CandlesMessage)
    out = []
    for r in msg.candles:
        _finite("candle", r.open, r.high, r.low, r.close, r.volume, r.buy_volume, r.sell_volume, r.vwap)
        out.append(
            Candle(
                msg.exchange,
                msg.symbol,
                r.interval,
                r.start,
                r.open,
                r.high,
                r.low,
                r.close,
                r.volume,
                r.buy_volume,
                r.sell_volume,
                r.trades,
                r.vwap,
            )
        )
    return out


def unpack_market(kind: str, payload: bytes, subject_key: tuple[str, str] | None = None) -> MarketUpdate:
    """A message of the market-data stream (`MARKET_KINDS`), by kind."""
    if kind == "ticker":
        return unpack_ticker(payload, subject_key)
    if kind == "derivatives":
        return unpack_derivatives(payload, subject_key)
    if kind == "liquidations":
        return unpack_liquidations(payload, subject_key)
    raise PayloadError(f"{kind!r} is not a market-data kind ({', '.join(MARKET_KINDS)})")


def subject_parts(prefix: str, subject: str) -> tuple[str, str, str]:
    """(kind, exchange, symbol) of `<prefix>.<kind>.<exchange>.<symbol>`."""
    rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else ""
    parts = rest.split(".")
    if len(parts) != 3:
        raise PayloadError(f"subject {subject!r} is not {prefix}.<kind>.<exchange>.<symbol>")
    return parts[0], parts[1], parts[2]
