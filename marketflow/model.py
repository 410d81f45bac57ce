"""Normalized records that cross channels between actors (SPEC §4).

Everything here is a msgspec Struct: cheap to build, cheap to encode, immutable. Prices and amounts are
`Decimal` built from the exchange's own string, so `"65114.20"` round-trips as `"65114.20"`. Times are
integer microseconds since the Unix epoch (UTC): `ts` is the exchange's time, `recv_ts` our receipt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import msgspec

Side = Literal["buy", "sell"]


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One trade. Identity is `(exchange, symbol, id)`; `side` is the taker's side."""

    exchange: str
    symbol: str
    id: str
    price: Decimal
    amount: Decimal
    side: Side
    ts: int
    recv_ts: int


Level = tuple[Decimal, Decimal]
"""One price level: (price, amount). An amount of zero deletes the level."""


class BookUpdate(msgspec.Struct, frozen=True, gc=False):
    """One order-book message from an exchange, normalized but not yet applied.

    `snapshot` replaces the whole book (Bybit `snapshot` or `u == 1`, a Binance REST snapshot). The ids
    carry each venue's sequence rule: Binance `first_id`/`last_id` = `U`/`u` and USD-M `prev_id` = `pu`;
    Bybit `first_id` = `last_id` = `u`; a Binance REST snapshot has both = `lastUpdateId`.
    """

    exchange: str
    symbol: str
    snapshot: bool
    first_id: int
    last_id: int
    prev_id: int | None
    bids: list[Level]
    asks: list[Level]
    ts: int
    recv_ts: int
    checksum: int | None = None
    """A checksum the venue sent with the message (None: none); its synchronizer verifies it."""


class Ticker(msgspec.Struct, frozen=True, gc=False):
    """Best bid/ask with sizes, last price and 24 h volume of one symbol (SPEC §12 `ticker`).

    A partial update: a field left None was not in this message and keeps its last value in the live
    state (Binance `bookTicker` has no last price, Bybit deltas omit what did not change). A `snapshot`
    replaces every field (None there: the venue does not give it). Decimals exactly as received.
    """

    exchange: str
    symbol: str
    ts: int
    recv_ts: int
    bid: Decimal | None = None
    bid_size: Decimal | None = None
    ask: Decimal | None = None
    ask_size: Decimal | None = None
    last: Decimal | None = None
    volume_24h: Decimal | None = None
    snapshot: bool = False


TICKER_FIELDS: tuple[str, ...] = ("bid", "bid_size", "ask", "ask_size", "last", "volume_24h")


class DerivativesTick(msgspec.Struct, frozen=True, gc=False):
    """Mark and index price, funding and open interest of one perpetual (SPEC §12 `derivatives`).

    Partial like `Ticker`: None = not in this message. `next_funding_time` is µs since the epoch;
    `open_interest` is in the venue's unit (contracts or base), `open_interest_value` in the quote asset.
    """

    exchange: str
    symbol: str
    ts: int
    recv_ts: int
    mark_price: Decimal | None = None
    index_price: Decimal | None = None
    funding_rate: Decimal | None = None
    next_funding_time: int | None = None
    open_interest: Decimal | None = None
    open_interest_value: Decimal | None = None
    snapshot: bool = False


DERIVATIVES_FIELDS: tuple[str, ...] = (
    "mark_price",
    "index_price",
    "funding_rate",
    "next_funding_time",
    "open_interest",
    "open_interest_value",
)


class Liquidation(msgspec.Struct, frozen=True, gc=False):
    """One forced order the venue published. Identity is `(exchange, symbol, id)`: the venue's id, or,
    where it gives none, one made from the event's own fields (time, side, price, amount), so the same
    event received twice is stored once. `side` is the forced order's side: `sell` closes a long."""

    exchange: str
    symbol: str
    id: str
    side: Side
    price: Decimal
    amount: Decimal
    ts: int
    recv_ts: int


def liquidation_id(ts_ms: int, side: str, price: str, amount: str) -> str:
    """The identity of a liquidation the venue gives no id for: its own fields, as received."""
    return f"{ts_ms}:{side}:{price}:{amount}"


MarketData = Ticker | DerivativesTick | Liquidation
"""What the market-data bus carries (channels `ticker`, `derivatives`, `liquidations`)."""


class Contract(msgspec.Struct, frozen=True, gc=False):
    """What one unit of `amount` is worth on a market whose amounts are contracts (SPEC §11).

    `value` is one contract's worth: base units for a linear contract (OKX `BTC-USDT-SWAP`: 0.01 BTC),
    quote units for an inverse one (`BTC-USD-SWAP`: 100 USD). Markets in base units have no `Contract`.
    """

    value: Decimal
    inverse: bool = False

    def notional(self, price: Decimal, amount: Decimal) -> Decimal:
        """The trade's notional in the quote currency: `amount·value` (inverse), else `price·amount·value`."""
        return amount * self.value if self.inverse else price * amount * self.value


def notional(price: Decimal, amount: Decimal, contract: Contract | None) -> Decimal:
    """Quote-currency notional of a trade: `price·amount` in base units, else per its `Contract`."""
    return price * amount if contract is None else contract.notional(price, amount)


class GapRecord(msgspec.Struct, frozen=True):
    """A stretch of time a channel of a symbol may be missing data, and what was recovered.

    `channel` is `trades` or `book`; `end` is None while the gap is open; `recovered` counts trades
    fetched back (books cannot be backfilled: they are re-snapshotted, so `recovered` stays 0).
    """

    exchange: str
    symbol: str
    channel: str
    start: int
    end: int | None
    reason: str
    recovered: int = 0


class RawFrames(msgspec.Struct, frozen=True, gc=False):
    """A batch of undecoded WebSocket text frames from one connection, as received.

    `feed` names the feed (e.g. `bybit-spot`); `recv_ts` is when the batch was read, in µs. The frames are
    kept as bytes so decoding happens once, in the normalizer, straight into venue Structs.
    """

    feed: str
    exchange: str
    market: str
    recv_ts: int
    frames: list[bytes]


# `marketflow replay` runs the pipeline on recorded time: it sets a clock here for the tasks it starts.
replay_clock: ContextVar[Callable[[], int] | None] = ContextVar("marketflow_replay_clock", default=None)


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch (the recorded time, during a replay)."""
    clock = replay_clock.get()
    return time.time_ns() // 1000 if clock is None else clock()


def us_to_iso(us: int) -> str:
    """ISO 8601 UTC with millisecond precision, e.g. `2026-08-09T12:00:19.680Z` (SPEC §4)."""
    dt = datetime.fromtimestamp(us // 1_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{(us // 1000) % 1000:03d}Z"


def spot_symbol(base: str, quote: str) -> str:
    return f"{base}-{quote}"


def perp_symbol(base: str, quote: str) -> str:
    return f"{base}-{quote}-PERP"


# Quote assets we recognise when splitting a native symbol such as `BTCUSDT`; longest match wins.
QUOTE_ASSETS: tuple[str, ...] = (
    "FDUSD",
    "USDT",
    "USDC",
    "TUSD",
    "USDE",
    "BUSD",
    "EUR",
    "TRY",
    "BRL",
    "BTC",
    "ETH",
    "BNB",
    "DAI",
    "USD",
)


class SymbolError(ValueError):
    """A symbol could not be understood."""


def split_native(native: str) -> tuple[str, str]:
    """Split a native symbol like `BTCUSDT` into `("BTC", "USDT")` by its quote asset."""
    upper = native.upper()
    for quote in sorted(QUOTE_ASSETS, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)], quote
    raise SymbolError(f"cannot tell base and quote apart in symbol {native!r}")


def normalize_symbol(symbol: str, *, perpetual: bool) -> str:
    """Accept native (`BTCUSDT`) or normalized (`BTC-USDT`, `BTC-USDT-PERP`) and return normalized."""
    text = symbol.strip().upper()
    if not text:
        raise SymbolError("empty symbol")
    if "-" in text:
        parts = text.split("-")
        if perpetual:
            if len(parts) == 2:
                parts.append("PERP")
            if len(parts) != 3 or parts[2] != "PERP" or not parts[0] or not parts[1]:
                raise SymbolError(f"{symbol!r} is not a perpetual symbol like BTC-USDT-PERP")
        elif len(parts) != 2 or not parts[0] or not parts[1]:
            raise SymbolError(f"{symbol!r} is not a spot symbol like BTC-USDT")
        return "-".join(parts)
    base, quote = split_native(text)
    return perp_symbol(base, quote) if perpetual else spot_symbol(base, quote)


def native_symbol(normalized: str) -> str:
    """`BTC-USDT` / `BTC-USDT-PERP` → `BTCUSDT` (Bybit and Binance write both the same way)."""
    parts = normalized.split("-")
    return parts[0] + parts[1]
