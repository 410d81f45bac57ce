"""Coinbase Advanced Trade public stream: `market_trades`, `level2`, `heartbeats` (PROTOCOLS.md §9).

The `FrameDecoder` (the hot path). The `Session` (subscribe one channel per message, acks, heartbeats,
the per-connection `sequence_num` rule) is in `session.py`, the market, URLs, topics and connections in
`streams.py`; both are re-exported here.

- Every message of a connection carries `sequence_num`, one counter across all channels, starting again on
  every connection. The session sees every message in order (`sequence_check`): a jump means messages were
  lost, and it hands the feed a marker frame naming the connection's `level2` products; the decoder turns
  the marker into one break per product, the book rule fails those books and the keeper resubscribes them
  (a new snapshot). Trades lost the same way show as a trade-id jump on the next trade.
- `market_trades` reports the **maker** side (§9.8): a `BUY` print is a seller hitting a resting bid, so
  the stored (taker) side is the opposite. The first event of a subscription is a snapshot of recent trades:
  real trades, stored; a reconnect repeats them and they are dropped by id. Trades inside one message are
  not in id order, so each product's trades are sorted by id before the id rule runs.
- `level2` arrives as `l2_data`: `snapshot` then `update` events whose `new_quantity` is the absolute size
  (`"0"` deletes); asks are `"offer"`. A busy product's snapshot is several MB in one message.
- `-USDC` products are aliased to `-USD` on data channels: a subscription to `BTC-USDC` gets messages tagged
  `BTC-USD` (USDT-USDC and EURC-USDC excepted).
"""

from __future__ import annotations

import calendar
import logging
from decimal import Decimal
from typing import Literal

import msgspec

from marketflow.exchanges.base import DecodeCounters, Decoded, TradeGap
from marketflow.exchanges.coinbase.session import (
    PRODUCTS_PER_REQUEST,
    SEND_INTERVAL_S,
    SEQUENCE_GAP_CHANNEL,
    Session,
)
from marketflow.exchanges.coinbase.streams import (
    BOOK_CHANNEL,
    BOOK_PREFIX,
    DEFAULT_REST,
    DEFAULT_WS,
    EXCHANGE,
    HEARTBEATS_CHANNEL,
    MARKET,
    TICKER_CHANNEL,
    TICKER_PREFIX,
    TRADES_CHANNEL,
    TRADES_PREFIX,
    book_topic,
    check_market,
    connections,
    rest_url,
    ticker_topic,
    trade_topic,
    ws_url,
)
from marketflow.exchanges.orderbook import bad_amount, shared_decimal
from marketflow.exchanges.trade_values import positive_decimal
from marketflow.exchanges.venue_base import count_malformed
from marketflow.model import BookUpdate, Level, Ticker, Trade

NOT_ALIASED = frozenset({"USDT-USDC", "EURC-USDC"})
DECIMAL_INTERN_MAX = 20_000

log = logging.getLogger("marketflow.exchanges.coinbase")

__all__ = [
    "BOOK_CHANNEL",
    "BOOK_PREFIX",
    "DECIMAL_INTERN_MAX",
    "DEFAULT_REST",
    "DEFAULT_WS",
    "EXCHANGE",
    "HEARTBEATS_CHANNEL",
    "MARKET",
    "NOT_ALIASED",
    "PRODUCTS_PER_REQUEST",
    "SEND_INTERVAL_S",
    "SEQUENCE_GAP_CHANNEL",
    "TICKER_CHANNEL",
    "TICKER_PREFIX",
    "TRADES_CHANNEL",
    "TRADES_PREFIX",
    "FrameDecoder",
    "Session",
    "Values",
    "book_topic",
    "check_market",
    "connections",
    "rest_url",
    "ticker_topic",
    "trade_topic",
    "ws_url",
]


class _Trade(msgspec.Struct):
    trade_id: str
    product_id: str
    price: str
    size: str
    side: str
    time: str


class _TradeEvent(msgspec.Struct):
    trades: list[_Trade]
    type: str = "update"


class _TradesFrame(msgspec.Struct, tag_field="channel", tag="market_trades"):
    events: list[_TradeEvent]
    timestamp: str = ""
    sequence_num: int = 0


class _Level(msgspec.Struct):
    side: Literal["bid", "offer"]
    """Checked by msgspec (another side makes the frame malformed)."""
    price_level: str
    new_quantity: Decimal
    """Decoded by msgspec: quantities seldom repeat, so a shared table would only churn (checked finite
    and >= 0 in `FrameDecoder._books`)."""


class _BookEvent(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_Level]


class _BookFrame(msgspec.Struct, tag_field="channel", tag="l2_data"):
    events: list[_BookEvent]
    timestamp: str = ""
    sequence_num: int = 0


class _GapFrame(msgspec.Struct, tag_field="channel", tag=SEQUENCE_GAP_CHANNEL):
    product_ids: list[str]
    to: int
    from_: int = msgspec.field(name="from")


class _Tick(msgspec.Struct):
    product_id: str
    price: str = ""
    volume_24_h: str = ""
    best_bid: str = ""
    best_bid_quantity: str = ""
    best_ask: str = ""
    best_ask_quantity: str = ""


class _TickerEvent(msgspec.Struct):
    tickers: list[_Tick]
    type: str = "update"


class _TickerFrame(msgspec.Struct, tag_field="channel", tag="ticker"):
    events: list[_TickerEvent]
    timestamp: str = ""
    sequence_num: int = 0


class _Other(msgspec.Struct):
    channel: str


_frame_decoder = msgspec.json.Decoder(_TradesFrame | _BookFrame | _TickerFrame | _GapFrame)
_other_decoder = msgspec.json.Decoder(_Other)
_OURS = frozenset({"market_trades", "l2_data", "ticker", SEQUENCE_GAP_CHANNEL, None})


def _other_channel(frame: bytes) -> str | None:
    """The channel of a frame the typed decoder refused (None: not even an object with a channel)."""
    try:
        return _other_decoder.decode(frame).channel
    except msgspec.DecodeError:
        return None


_TAKER: dict[str, Literal["buy", "sell"]] = {"BUY": "sell", "SELL": "buy"}
"""Reported (maker) side → stored (taker) side."""


class Values:
    """Exact decimals (one shared object per distinct string) and RFC 3339 times, as Coinbase writes them."""

    def __init__(self) -> None:
        self._decimals: dict[str, Decimal] = {}
        self._trade_values: dict[str, Decimal] = {}
        """Trade prices and sizes: every entry checked finite and > 0 (`positive_decimal`), so a hit needs
        no check; the shared table may hold a zero (a ticker's empty side)."""
        self._minutes: dict[str, int] = {}
        self._last_text = ""
        self._last_us = 0

    def decimal(self, text: str) -> Decimal:
        """The exact Decimal of a decimal string, one shared object per distinct string."""
        value = self._decimals.get(text)
        if value is None:
            try:
                value = Decimal(text)
            except ArithmeticError:
                raise msgspec.DecodeError(f"not a decimal: {text[:40]!r}") from None
            if not value.is_finite() or value < 0:
                raise msgspec.DecodeError(f"not a finite non-negative decimal: {text[:40]!r}")
            if len(self._decimals) >= DECIMAL_INTERN_MAX:
                self._decimals.clear()
            self._decimals[text] = value
        return value

    def trade_value(self, text: str, field: str) -> Decimal:
        """A trade's price or size (`field`): the one shared Decimal, finite and above zero."""
        table = self._trade_values
        return table.get(text) or positive_decimal(table, text, field, DECIMAL_INTERN_MAX)

    @property
    def shared(self) -> dict[str, Decimal]:
        """The table of shared decimals (text → the one object), for lookups on a hot path."""
        return self._decimals

    def fresh(self, text: str) -> Decimal:
        """The exact Decimal of a value that seldom repeats, not kept in the shared table."""
        try:
            value = Decimal(text)
        except ArithmeticError:
            raise msgspec.DecodeError(f"not a decimal: {text[:40]!r}") from None
        if not value.is_finite() or value < 0:
            raise msgspec.DecodeError(f"not a finite non-negative decimal: {text[:40]!r}")
        return value

    def us(self, text: str) -> int:
        """RFC 3339 UTC (`2026-08-14T20:42:27.265123456Z`) → µs since the epoch."""
        if text == self._last_text:  # the trades of one batch often share their time
            return self._last_us
        self._last_us = value = self._parse_us(text)
        self._last_text = text
        return value

    def _parse_us(self, text: str) -> int:
        # The shape Coinbase sends (`...:27.265123456Z`, a fraction of 1-9 digits): the minute from the
        # table, then one slice per field. Anything else takes the checked path below.
        minute = self._minutes.get(text[:16])
        if minute is not None and 21 <= len(text) <= 30 and text[19] == "." and text[-1] == "Z":
            seconds = text[17:19]
            fraction = text[20:-1]
            if seconds.isdigit() and fraction.isdigit():
                return minute + int(seconds) * 1_000_000 + int((fraction + "00000")[:6])
        return self._parse_us_checked(text)

    def _parse_us_checked(self, text: str) -> int:
        minute = self._minutes.get(text[:16])
        if minute is None:
            try:
                if len(text) < 20 or text[4] != "-" or text[10] != "T" or text[16] != ":":
                    raise ValueError(text)
                fields = (int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]))
                minute = calendar.timegm((*fields, 0, 0, 0, 0)) * 1_000_000
            except ValueError:
                raise msgspec.DecodeError(f"not an RFC 3339 UTC time: {text[:40]!r}") from None
            if len(self._minutes) > 1000:
                self._minutes.clear()
            self._minutes[text[:16]] = minute
        rest = text[17:]
        if not rest.endswith("Z") or not rest[:2].isdigit() or rest[2] not in ".Z":
            raise msgspec.DecodeError(f"not an RFC 3339 UTC time: {text[:40]!r}")
        fraction = rest[3:-1]
        if fraction and not fraction.isdigit():
            raise msgspec.DecodeError(f"not an RFC 3339 UTC time: {text[:40]!r}")
        return minute + int(rest[:2]) * 1_000_000 + int((fraction + "000000")[:6])


class FrameDecoder:
    """Coinbase data frames → trades (taker side) and book updates of one connection.

    Book updates carry the message's `sequence_num` as `first_id` = `last_id` and the decoder's epoch (how
    many sequence gaps it has seen) as `prev_id`; a gap marker is an update with no levels, `first_id` =
    the last number before the loss, `last_id` = the first after it and the new epoch (`CoinbaseBook`).
    """

    def __init__(self, exchange: str, market: str, symbols: dict[str, str]) -> None:
        self.exchange = exchange
        self.market = market
        self.symbols = dict(symbols)
        # Data channels tag `-USDC` subscriptions as `-USD`: route those to the subscribed product.
        self._route: dict[str, str] = {n: n for n in symbols}
        for native in symbols:
            if native.endswith("-USDC") and native not in NOT_ALIASED:
                self._route.setdefault(native[:-1], native)
        self.counters = DecodeCounters()
        self.last_id: dict[str, int] = {}
        """Per subscribed product: the highest trade id seen (ids are contiguous per product)."""
        self.last_ts: dict[str, int] = {}
        self.epoch = 0
        self.values = Values()

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None:
        counters = self.counters
        for frame in frames:
            counters.frames += 1
            try:
                msg = _frame_decoder.decode(frame)
                if isinstance(msg, _TradesFrame):
                    self._trades(msg, recv_ts, out)
                elif isinstance(msg, _BookFrame):
                    self._books(msg, recv_ts, out)
                elif isinstance(msg, _TickerFrame):
                    self._tickers(msg, recv_ts, out)
                else:
                    self._gap(msg, recv_ts, out)
            except msgspec.DecodeError as exc:
                if _other_channel(frame) not in _OURS:
                    counters.ignored += 1  # heartbeats, ticker, ...: a channel we do not decode
                    continue
                count_malformed(log, counters, "coinbase", self.market, exc, frame)

    def _symbol(self, product: str) -> tuple[str, str] | None:
        native = self._route.get(product)
        if native is None:
            self.counters.unknown_topics += 1
            return None
        return native, self.symbols[native]

    def _trades(self, msg: _TradesFrame, recv_ts: int, out: Decoded) -> None:
        value = self.values.trade_value
        stamp = self.values.us
        by_product: dict[str, list[tuple[int, _Trade]]] = {}
        for event in msg.events:
            for t in event.trades:
                if not t.trade_id.isdigit():
                    raise msgspec.DecodeError(f"trade_id is not numeric: {t.trade_id[:40]!r}")
                by_product.setdefault(t.product_id, []).append((int(t.trade_id), t))
        made: list[tuple[str, str, list[tuple[int, Trade]]]] = []
        for product, trades in by_product.items():
            found = self._symbol(product)
            if found is None:
                continue
            native, symbol = found
            trades.sort(key=lambda pair: pair[0])  # not in id order within a message (§9.7)
            rows = []
            for trade_id, t in trades:
                side = _TAKER.get(t.side)
                if side is None:
                    raise msgspec.DecodeError(f"unknown trade side {t.side[:20]!r}")
                trade = Trade(
                    self.exchange,
                    symbol,
                    t.trade_id,
                    value(t.price, "price"),
                    value(t.size, "amount"),
                    side,
                    stamp(t.time),
                    recv_ts,
                )
                rows.append((trade_id, trade))
            made.append((native, symbol, rows))
        # Everything converted before anything is kept: a bad value rejects the whole frame (malformed).
        for native, symbol, rows in made:
            last = self.last_id.get(native)
            last_ts = self.last_ts.get(native, 0)
            for trade_id, trade in rows:
                if last is not None and trade_id <= last:
                    self.counters.duplicates += 1  # a reconnect's recent-trades snapshot, again
                    continue
                if last is not None and trade_id > last + 1:
                    out.trade_gaps.append(
                        TradeGap(
                            self.exchange, self.market, symbol, native, last + 1, trade_id, last_ts, trade.ts
                        )
                    )
                out.trades.append(trade)
                self.counters.trades += 1
                last = trade_id
                last_ts = max(last_ts, trade.ts)
            if last is not None:
                self.last_id[native] = last
                self.last_ts[native] = last_ts

    def _books(self, msg: _BookFrame, recv_ts: int, out: Decoded) -> None:
        ts = self.values.us(msg.timestamp) if msg.timestamp else recv_ts
        seq = msg.sequence_num
        # Prices from the shared table (they repeat near the touch; tickers share them), quantities as
        # msgspec made them, checked finite and >= 0, one comprehension per side (a Python call per value
        # was most of it, and quantities, seldom seen twice, made the table start over often).
        table = self.values.shared
        get = table.get
        made = []
        for event in msg.events:
            found = self._symbol(event.product_id)
            if found is None:
                continue
            updates = event.updates
            bids: list[Level] = [
                (get(level.price_level) or shared_decimal(table, level.price_level), amount)
                for level in updates
                if level.side == "bid"
                and (
                    (amount := level.new_quantity).is_finite()
                    and not amount.is_signed()
                    or bad_amount(amount)
                )
            ]
            asks: list[Level] = [
                (get(level.price_level) or shared_decimal(table, level.price_level), amount)
                for level in updates
                if level.side == "offer"
                and (
                    (amount := level.new_quantity).is_finite()
                    and not amount.is_signed()
                    or bad_amount(amount)
                )
            ]
            snapshot = event.type == "snapshot"
            made.append(
                BookUpdate(self.exchange, found[1], snapshot, seq, seq, self.epoch, bids, asks, ts, recv_ts)
            )
        out.books += made
        self.counters.book_updates += len(made)

    def _tickers(self, msg: _TickerFrame, recv_ts: int, out: Decoded) -> None:
        """Every `ticker` message carries all its fields: each is a snapshot of the ticker state. Prices
        and sizes are the shared objects (a hit is one lookup; "" and "0" miss and take `_optional`); the
        24 h volume changes with every trade, so it is a fresh Decimal kept out of the shared table."""
        ts = self.values.us(msg.timestamp) if msg.timestamp else recv_ts
        value = self._optional
        get = self.values.shared.get
        made = []
        for event in msg.events:
            for t in event.tickers:
                found = self._symbol(t.product_id)
                if found is None:
                    continue
                volume = t.volume_24_h
                made.append(
                    Ticker(
                        self.exchange,
                        found[1],
                        ts,
                        recv_ts,
                        get(t.best_bid) or value(t.best_bid),
                        get(t.best_bid_quantity) or value(t.best_bid_quantity),
                        get(t.best_ask) or value(t.best_ask),
                        get(t.best_ask_quantity) or value(t.best_ask_quantity),
                        get(t.price) or value(t.price),
                        self.values.fresh(volume) if volume else None,
                        snapshot=True,
                    )
                )
        out.tickers += made
        self.counters.tickers += len(made)

    def _optional(self, text: str) -> Decimal | None:
        return self.values.decimal(text) if text else None

    def _gap(self, msg: _GapFrame, recv_ts: int, out: Decoded) -> None:
        self.epoch += 1
        for product in msg.product_ids:
            symbol = self.symbols.get(product)
            if symbol is None:
                continue
            out.books.append(
                BookUpdate(
                    self.exchange, symbol, False, msg.from_, msg.to, self.epoch, [], [], recv_ts, recv_ts
                )
            )
            self.counters.book_updates += 1

    def admit_backfill(self, native: str, trades: list[Trade], since_ts: int) -> list[Trade]:
        """Coinbase gaps are filled by trade id (`rest.fill_gap`): only the time bound applies."""
        return sorted((t for t in trades if t.ts >= since_ts), key=lambda t: t.ts)
