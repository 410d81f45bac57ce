"""OKX `tickers`, `mark-price`, `index-tickers`, `funding-rate`, `open-interest` and `liquidation-orders`
(PROTOCOLS.md §8.3) -> the model's partial `Ticker` / `DerivativesTick` records and `Liquidation`s.

Each channel carries a part of what the `derivatives` channel means, so each makes a partial record: the
live state merges them. `index-tickers` is subscribed by index (`BTC-USDT`), and its price goes to every
instrument of the connection on that index (`BTC-USDT-SWAP`). `funding-rate`'s `fundingTime` is the next
settlement (`nextFundingTime` is the one after). `open-interest`: `oi` in contracts, `oiUsd` as the value.
`liquidation-orders` is subscribed per instrument type and carries every instrument of it: only the
connection's own are kept. Its `side` is the liquidation order's side; it gives no id, so the identity is
made of time, side, position side, bankruptcy price and size. OKX sends empty strings for values it does
not have: they are None here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import DecodeCounters, Decoded
from marketflow.exchanges.orderbook import shared_decimal
from marketflow.model import DerivativesTick, Liquidation, Ticker, liquidation_id

TICKERS = "tickers"
MARK_PRICE = "mark-price"
INDEX_TICKERS = "index-tickers"
FUNDING_RATE = "funding-rate"
OPEN_INTEREST = "open-interest"
LIQUIDATION_ORDERS = "liquidation-orders"
DERIVATIVES_CHANNELS = (MARK_PRICE, INDEX_TICKERS, FUNDING_RATE, OPEN_INTEREST)
CHANNELS = frozenset({TICKERS, *DERIVATIVES_CHANNELS, LIQUIDATION_ORDERS})
BY_INST_TYPE = frozenset({LIQUIDATION_ORDERS})
"""Channels subscribed by `instType` rather than `instId`."""


def index_of(native: str) -> str:
    """The index of an instrument: `BTC-USDT-SWAP` -> `BTC-USDT`, `BTC-USD-250627` -> `BTC-USD`."""
    return "-".join(native.split("-")[:2])


class _Tick(msgspec.Struct):
    instId: str = ""
    ts: int = 0
    last: str = ""
    askPx: str = ""
    askSz: str = ""
    bidPx: str = ""
    bidSz: str = ""
    vol24h: str = ""
    markPx: str = ""
    idxPx: str = ""
    fundingRate: str = ""
    fundingTime: int | str = ""
    oi: str = ""
    oiUsd: str = ""


class _Detail(msgspec.Struct):
    side: str
    bkPx: str
    sz: str
    ts: int
    posSide: str = ""


class _Liquidations(msgspec.Struct):
    instId: str
    details: list[_Detail]


_ticks_decoder = msgspec.json.Decoder(list[_Tick], strict=False)


class _TickArg(msgspec.Struct):
    channel: str
    instId: str = ""


class _TickersFrame(msgspec.Struct):
    """A `tickers` push in one pass (its `arg` and data), for the hot path."""

    arg: _TickArg
    data: list[_Tick]


_tickers_frame_decoder = msgspec.json.Decoder(_TickersFrame, strict=False)
TICKERS_START = b'{"arg":{"channel":"tickers",'
"""How every `tickers` push begins; others (other key orders) take the envelope-then-data path."""


def decode_tickers_frame(
    exchange: str,
    frame: bytes,
    symbols: Mapping[str, str],
    shared: dict[str, Decimal],
    recv_ts: int,
    out: Decoded,
    counters: DecodeCounters,
) -> None:
    """A whole `tickers` frame: prices and sizes are the objects of the `shared` table (they repeat), the
    24 h volume a fresh Decimal (it changes with every trade: it would only crowd the table). Raises
    msgspec.DecodeError on a bad value (nothing is kept)."""
    msg = _tickers_frame_decoder.decode(frame)
    if msg.arg.channel != TICKERS:
        raise msgspec.DecodeError(f"not a tickers push: {msg.arg.channel[:40]!r}")
    get = shared.get
    made = []
    for t in msg.data:
        symbol = symbols.get(t.instId)
        if symbol is None:
            counters.unknown_topics += 1
            continue
        bid, bid_size, ask, ask_size, last = t.bidPx, t.bidSz, t.askPx, t.askSz, t.last
        made.append(
            Ticker(
                exchange,
                symbol,
                t.ts * 1000,
                recv_ts,
                get(bid) or _shared(shared, bid),
                get(bid_size) or _shared(shared, bid_size),
                get(ask) or _shared(shared, ask),
                get(ask_size) or _shared(shared, ask_size),
                get(last) or _shared(shared, last),
                _fresh(t.vol24h),
            )
        )
    out.tickers.extend(made)
    counters.tickers += len(made)


def _shared(table: dict[str, Decimal], text: str) -> Decimal | None:
    return None if text == "" else shared_decimal(table, text)


def _fresh(text: str) -> Decimal | None:
    if text == "":
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise msgspec.DecodeError(f"not a decimal: {text[:40]!r}") from None
    if not value.is_finite():
        raise msgspec.DecodeError(f"not a finite decimal: {text[:40]!r}")
    return value


_liquidations_decoder = msgspec.json.Decoder(list[_Liquidations], strict=False)
_SIDES: dict[str, Literal["buy", "sell"]] = {"buy": "buy", "sell": "sell"}


def decode_market_data(
    exchange: str,
    channel: str,
    data: bytes,
    symbols: Mapping[str, str],
    decimal: Callable[[str], Decimal],
    recv_ts: int,
    out: Decoded,
    counters: DecodeCounters,
) -> None:
    """One push of a market-data channel; raises msgspec.DecodeError on a bad value (nothing is kept)."""

    def dec(text: str) -> Decimal | None:
        return None if text == "" else decimal(text)

    if channel == LIQUIDATION_ORDERS:
        made = []
        for entry in _liquidations_decoder.decode(data):
            symbol = symbols.get(entry.instId)
            if symbol is None:
                continue  # another instrument of the type
            for d in entry.details:
                side = _SIDES.get(d.side)
                if side is None:
                    raise msgspec.DecodeError(f"unknown liquidation side {d.side[:20]!r}")
                ident = liquidation_id(d.ts, f"{d.side}/{d.posSide}", d.bkPx, d.sz)
                made.append(
                    Liquidation(
                        exchange, symbol, ident, side, decimal(d.bkPx), decimal(d.sz), d.ts * 1000, recv_ts
                    )
                )
        out.liquidations.extend(made)
        counters.liquidations += len(made)
        return
    tickers: list[Ticker] = []
    derivs: list[DerivativesTick] = []
    for t in _ticks_decoder.decode(data):
        ts = t.ts * 1000
        if channel == INDEX_TICKERS:
            price = dec(t.idxPx)
            for native, symbol in symbols.items():
                if native != t.instId and index_of(native) == t.instId:
                    derivs.append(DerivativesTick(exchange, symbol, ts, recv_ts, index_price=price))
            continue
        symbol = symbols.get(t.instId)
        if symbol is None:
            counters.unknown_topics += 1
            continue
        if channel == TICKERS:
            tickers.append(
                Ticker(
                    exchange, symbol, ts, recv_ts, dec(t.bidPx), dec(t.bidSz), dec(t.askPx), dec(t.askSz),
                    dec(t.last), dec(t.vol24h),
                )
            )  # fmt: skip
        elif channel == MARK_PRICE:
            derivs.append(DerivativesTick(exchange, symbol, ts, recv_ts, mark_price=dec(t.markPx)))
        elif channel == FUNDING_RATE:
            when = None
            if t.fundingTime != "":
                try:
                    when = int(t.fundingTime) * 1000
                except ValueError:
                    raise msgspec.DecodeError(f"not a time: {str(t.fundingTime)[:40]!r}") from None
            derivs.append(
                DerivativesTick(
                    exchange, symbol, ts, recv_ts, funding_rate=dec(t.fundingRate), next_funding_time=when
                )
            )
        else:
            derivs.append(
                DerivativesTick(
                    exchange, symbol, ts, recv_ts, open_interest=dec(t.oi), open_interest_value=dec(t.oiUsd)
                )
            )
    out.tickers.extend(tickers)
    out.derivatives.extend(derivs)
    counters.tickers += len(tickers)
    counters.derivatives += len(derivs)
