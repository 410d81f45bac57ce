"""The simulator's ticker, derivatives and liquidation streams (SPEC §12), driven by its order books.

Every stream is a `BookStream` on the symbol's `SimBook` (the same book the depth streams publish, whose
touch walks around the same start price as the trade tape), so its best bid/ask is the book's. Mark and
index price sit at the mid, funding rate and open interest walk deterministically with the book's update
count (`DerivsModel`), and a seeded generator decides when a liquidation happens — the same seed gives the
same values; only timestamps are wall-clock time.

Bybit: `tickers.<SYMBOL>` (linear: a snapshot on subscribe, then deltas carrying only the fields that
changed; spot: snapshots of last price and 24 h volume), `allLiquidation.<SYMBOL>` (`S` = the liquidated
position's side). Binance: `<sym>@bookTicker` (spot without time, USD-M with `E`/`T`), `<sym>@ticker`,
`<sym>@markPrice@1s`, `<sym>@forceOrder` (at most one per second), and REST `/fapi/v1/openInterest`
(`DerivsModel.open_interest`). Fault `out_of_order_every`: every N-th message is sent again after the next
one — an older tick arriving late, which a client must not let roll a field back.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable
from decimal import Decimal

from marketflow.sim.book import BookTick, SimBook, depth_every
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import Formats, FrameSink, WireFrame, channel_key, stable_crc

FUNDING_INTERVAL_MS = 8 * 3_600_000
SENT_KEPT = 20_000


class DerivsModel:
    """Deterministic derivatives values of one book: functions of its state and update count."""

    def __init__(self, book: SimBook) -> None:
        self.book = book
        self.formats = Formats(book.instrument)
        self._base = 100_000 + stable_crc(book.symbol + ":oi") % 900_000  # open interest, in 0.001

    def mid_ticks(self) -> int:
        return (self.book.best_bid() + self.book.best_ask()) // 2

    def mark(self) -> str:
        return self.formats.price(self.mid_ticks())

    def index(self) -> str:
        return self.formats.price(self.mid_ticks() + (self.book.updates // 7) % 3 - 1)

    def funding_rate(self) -> str:
        micro = (stable_crc(self.book.symbol) + self.book.updates // 50) % 401 - 200
        return format(Decimal(micro).scaleb(-6), "f")

    @staticmethod
    def next_funding_ms(ts_ms: int) -> int:
        return (ts_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS

    def open_interest(self) -> str:
        n = self.book.updates
        steps = self._base + (n * 37) % 5_000 - (n * 11) % 3_000
        return "%d.%03d" % divmod(steps, 1000)  # noqa: UP031

    def open_interest_value(self) -> str:
        return format(Decimal(self.open_interest()) * Decimal(self.mark()), "f")

    def best(self) -> tuple[str, str, str, str]:
        book, f = self.book, self.formats
        bid, ask = book.best_bid(), book.best_ask()
        return f.price(bid), f.size(book.bids[bid]), f.price(ask), f.size(book.asks[ask])

    def volume_24h(self) -> str:
        return "%d.%03d" % divmod(500_000 + self.book.updates * 13, 1000)  # noqa: UP031


class _Stream:
    """Sinks (with their combined-wrapper wish), publishing, and the out-of-order fault."""

    def __init__(self, book: SimBook, name: str, out_of_order_every: int | None) -> None:
        self.book = book
        self.model = DerivsModel(book)
        self.name = name
        self._sinks: dict[FrameSink, bool] = {}
        self._every = out_of_order_every
        self._count = 0
        self._previous: str | None = None
        self.rng = random.Random(stable_crc(name + ":" + book.category))
        self.sent: deque[str] = deque(maxlen=SENT_KEPT)
        """The payloads published, in order (a late re-send too), for tests to check against."""

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> Iterable[FrameSink]:
        return list(self._sinks)

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        self._sinks[sink] = combined
        first = self.first(combined)
        return None if first is None else self._wire(first, combined)

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.pop(sink, None)

    def crossing_outstanding(self) -> bool:
        return False

    def on_idle(self, ts_ms: int) -> None:
        """Nothing is re-sent between book updates."""

    def first(self, combined: bool) -> str | None:
        """The payload a new subscriber gets first (a Bybit snapshot), or None."""
        return None

    def _wire(self, payload: str, combined: bool) -> WireFrame:
        text = '{"stream":"' + self.name + '","data":' + payload + "}" if combined else payload
        return WireFrame(ws_text_frame(text.encode()), channel_key(self.name, combined))

    def publish(self, payload: str) -> None:
        payloads = [payload]
        self._count += 1
        if self._every is not None and self._count % self._every == 0 and self._previous is not None:
            payloads.append(self._previous)  # the older message again, after the newer one
        self._previous = payload
        self.sent.extend(payloads)
        for sink, combined in self._sinks.items():
            sink.push_frames([self._wire(p, combined) for p in payloads])


# -- Bybit ------------------------------------------------------------------------------------------------

_BYBIT_LINEAR_FIELDS = (
    "lastPrice",
    "markPrice",
    "indexPrice",
    "openInterest",
    "openInterestValue",
    "volume24h",
    "nextFundingTime",
    "fundingRate",
    "bid1Price",
    "bid1Size",
    "ask1Price",
    "ask1Size",
)


class BybitTickerStream(_Stream):
    """`tickers.<SYMBOL>`: linear snapshot then deltas of changed fields only; spot snapshots."""

    def __init__(self, category: str, book: SimBook, out_of_order_every: int | None = None) -> None:
        super().__init__(book, "tickers." + book.symbol, out_of_order_every)
        self.linear = category != "spot"
        self._published: dict[str, str] = {}
        self._cs = 24_987_956_059 + stable_crc(book.symbol) % 1_000_000

    def fields(self, ts_ms: int) -> dict[str, str]:
        m = self.model
        bid, bid_size, ask, ask_size = m.best()
        values = {"lastPrice": m.mark(), "volume24h": m.volume_24h()}
        if self.linear:
            values |= {
                "markPrice": m.mark(),
                "indexPrice": m.index(),
                "openInterest": m.open_interest(),
                "openInterestValue": m.open_interest_value(),
                "nextFundingTime": str(m.next_funding_ms(ts_ms)),
                "fundingRate": m.funding_rate(),
                "bid1Price": bid,
                "bid1Size": bid_size,
                "ask1Price": ask,
                "ask1Size": ask_size,
            }
        return values

    def _frame(self, kind: str, values: dict[str, str], ts_ms: int) -> str:
        self._cs += 1
        data = ",".join('"%s":"%s"' % kv for kv in values.items())  # noqa: UP031
        symbol = self.book.symbol
        return (
            '{"topic":"%s","type":"%s","data":{"symbol":"%s"%s},"cs":%d,"ts":%d}'  # noqa: UP031
            % (self.name, kind, symbol, "," + data if data else "", self._cs, ts_ms)
        )

    def first(self, combined: bool) -> str:
        ts = _now_ms()
        self._published = self.fields(ts)
        snapshot = self._frame("snapshot", self._published, ts)
        self.sent.append(snapshot)
        return snapshot

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        values = self.fields(ts_ms)
        if not self.linear:
            self.publish(self._frame("snapshot", values, ts_ms))
            return
        changed = {k: v for k, v in values.items() if self._published.get(k) != v}
        if not changed:
            return
        self._published = values
        self.publish(self._frame("delta", changed, ts_ms))


class BybitLiquidationStream(_Stream):
    """`allLiquidation.<SYMBOL>`: now and then one liquidation at the touch (`S`: the position's side)."""

    def __init__(self, book: SimBook, chance: float = 0.2) -> None:
        super().__init__(book, "allLiquidation." + book.symbol, None)
        self.chance = chance

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self.rng.random() >= self.chance:
            return
        long = self.rng.random() < 0.5  # a long is closed by selling into the bid
        bid, _, ask, _ = self.model.best()
        size = self.model.formats.size(self.rng.randint(1, 50))
        self.publish(
            '{"topic":"%s","type":"snapshot","ts":%d,"data":[{"T":%d,"s":"%s","S":"%s","v":"%s","p":"%s"}]}'  # noqa: UP031
            % (
                self.name,
                ts_ms,
                ts_ms - 1,
                self.book.symbol,
                "Buy" if long else "Sell",
                size,
                bid if long else ask,
            )
        )


# -- Binance ----------------------------------------------------------------------------------------------


class BinanceBookTickerStream(_Stream):
    """`<sym>@bookTicker` on every change of the touch (USD-M frames carry `E`/`T`, spot ones no time)."""

    def __init__(self, market: str, book: SimBook, out_of_order_every: int | None = None) -> None:
        super().__init__(book, book.symbol.lower() + "@bookTicker", out_of_order_every)
        self.usdm = market == "usdm"
        self._last: tuple[str, str, str, str] | None = None

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        best = self.model.best()
        if best == self._last:
            return
        self._last = best
        b, bq, a, aq = best
        u, s = self.book.last_id, self.book.symbol
        if self.usdm:
            payload = (
                '{"e":"bookTicker","u":%d,"s":"%s","b":"%s","B":"%s","a":"%s","A":"%s","T":%d,"E":%d}'  # noqa: UP031
                % (u, s, b, bq, a, aq, ts_ms, ts_ms)
            )
        else:
            payload = '{"u":%d,"s":"%s","b":"%s","B":"%s","a":"%s","A":"%s"}' % (u, s, b, bq, a, aq)  # noqa: UP031
        self.publish(payload)


class _EverySecond(_Stream):
    """A stream pushed once a second of book updates (`every` updates at the book's rate)."""

    def __init__(self, book: SimBook, name: str, book_rate: float, out_of_order_every: int | None) -> None:
        super().__init__(book, name, out_of_order_every)
        self.every = max(1, depth_every(1000, book_rate))
        self._n = 0

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        self._n += 1
        if self._n % self.every == 0:
            payload = self.payload(ts_ms)
            if payload is not None:
                self.publish(payload)

    def payload(self, ts_ms: int) -> str | None:
        raise NotImplementedError


class BinanceTickerStream(_EverySecond):
    """`<sym>@ticker`: the 24 h rolling ticker (last price `c`, base volume `v`), every second."""

    def __init__(self, book: SimBook, book_rate: float) -> None:
        super().__init__(book, book.symbol.lower() + "@ticker", book_rate, None)

    def payload(self, ts_ms: int) -> str:
        m = self.model
        return '{"e":"24hrTicker","E":%d,"s":"%s","c":"%s","v":"%s"}' % (  # noqa: UP031
            ts_ms,
            self.book.symbol,
            m.mark(),
            m.volume_24h(),
        )


class BinanceMarkPriceStream(_EverySecond):
    """`<sym>@markPrice@1s`: mark, index, funding rate and next funding time, every second."""

    def __init__(self, book: SimBook, book_rate: float, out_of_order_every: int | None = None) -> None:
        super().__init__(book, book.symbol.lower() + "@markPrice@1s", book_rate, out_of_order_every)

    def payload(self, ts_ms: int) -> str:
        m = self.model
        return (
            '{"e":"markPriceUpdate","E":%d,"s":"%s","p":"%s","i":"%s","P":"%s","r":"%s","T":%d}'  # noqa: UP031
            % (
                ts_ms,
                self.book.symbol,
                m.mark(),
                m.index(),
                m.index(),
                m.funding_rate(),
                m.next_funding_ms(ts_ms),
            )
        )


class BinanceForceOrderStream(_EverySecond):
    """`<sym>@forceOrder`: at most the latest liquidation per second (`S`: the forced order's side)."""

    def __init__(self, book: SimBook, book_rate: float, chance: float = 0.6) -> None:
        super().__init__(book, book.symbol.lower() + "@forceOrder", book_rate, None)
        self.chance = chance

    def payload(self, ts_ms: int) -> str | None:
        if self.rng.random() >= self.chance:
            return None
        sell = self.rng.random() < 0.5
        bid, _, ask, _ = self.model.best()
        qty = self.model.formats.size(self.rng.randint(1, 50))
        price = bid if sell else ask
        return (
            '{"e":"forceOrder","E":%d,"o":{"s":"%s","S":"%s","o":"LIMIT","f":"IOC","q":"%s","p":"%s",'  # noqa: UP031
            '"ap":"%s","X":"FILLED","l":"%s","z":"%s","T":%d}}'
            % (ts_ms, self.book.symbol, "SELL" if sell else "BUY", qty, price, price, qty, qty, ts_ms - 1)
        )


def open_interest_body(book: SimBook, now_ms: int) -> dict[str, object]:
    """`GET /fapi/v1/openInterest` of a book's symbol."""
    body: dict[str, object] = {"openInterest": DerivsModel(book).open_interest(), "symbol": book.symbol}
    body["time"] = now_ms
    return body


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- OKX --------------------------------------------------------------------------------------------------

OKX_INST_TYPES = {"spot": "SPOT", "swap": "SWAP", "futures": "FUTURES"}


class OkxMarketDataStream(_Stream):
    """One OKX market-data channel of one instrument: `tickers` (on every change of the touch),
    `mark-price` (every other update), `index-tickers`, `funding-rate` and `open-interest` (once a second).
    Values are strings, times too, as OKX sends them."""

    def __init__(
        self, channel: str, inst: str, market: str, book: SimBook, book_rate: float, late: int | None = None
    ) -> None:
        super().__init__(book, f"{channel}:{inst}", late)
        self.channel = channel
        self.inst = inst
        self.inst_type = OKX_INST_TYPES.get(market, "SWAP")
        self.every = (
            1 if channel == "tickers" else 2 if channel == "mark-price" else depth_every(1000, book_rate)
        )
        self._n = 0
        self._last: str | None = None

    def _data(self, ts_ms: int) -> str:
        m, ts, inst = self.model, str(ts_ms), self.inst
        if self.channel == "tickers":
            bid, bid_size, ask, ask_size = m.best()
            return (
                '{"instType":"%s","instId":"%s","last":"%s","lastSz":"1","askPx":"%s","askSz":"%s",'  # noqa: UP031
                '"bidPx":"%s","bidSz":"%s","vol24h":"%s","ts":"%s"}'
                % (self.inst_type, inst, m.mark(), ask, ask_size, bid, bid_size, m.volume_24h(), ts)
            )
        if self.channel == "mark-price":
            template = '{"instType":"%s","instId":"%s","markPx":"%s","ts":"%s"}'
            return template % (self.inst_type, inst, m.mark(), ts)  # noqa: UP031
        if self.channel == "index-tickers":
            return '{"instId":"%s","idxPx":"%s","ts":"%s"}' % (inst, m.index(), ts)  # noqa: UP031
        if self.channel == "funding-rate":
            due = m.next_funding_ms(ts_ms)
            return (
                '{"fundingRate":"%s","fundingTime":"%d","instId":"%s","instType":"SWAP",'  # noqa: UP031
                '"method":"current_period","nextFundingRate":"","nextFundingTime":"%d","ts":"%s"}'
                % (m.funding_rate(), due, inst, due + FUNDING_INTERVAL_MS, ts)
            )
        return '{"instId":"%s","instType":"%s","oi":"%s","oiCcy":"%s","oiUsd":"%s","ts":"%s"}' % (  # noqa: UP031
            inst,
            self.inst_type,
            m.open_interest(),
            m.open_interest(),
            m.open_interest_value(),
            ts,
        )

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        self._n += 1
        if self._n % self.every:
            return
        data = self._data(ts_ms)
        if self.channel == "tickers":
            key = data.rpartition(',"ts"')[0]
            if key == self._last:
                return
            self._last = key
        self.publish('{"arg":{"channel":"%s","instId":"%s"},"data":[%s]}' % (self.channel, self.inst, data))  # noqa: UP031


class OkxLiquidationStream(_Stream):
    """`liquidation-orders` of one instrument, on the instrument type's subscription: now and then a
    liquidation at the touch (`side`: the liquidation order's), sometimes older than the previous one."""

    def __init__(self, inst: str, market: str, book: SimBook, chance: float = 0.2) -> None:
        super().__init__(book, f"liquidation-orders:{OKX_INST_TYPES.get(market, 'SWAP')}:{inst}", None)
        self.inst = inst
        self.inst_type = OKX_INST_TYPES.get(market, "SWAP")
        self.chance = chance

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self.rng.random() >= self.chance:
            return
        sell = self.rng.random() < 0.5  # a long is closed by a sell
        bid, _, ask, _ = self.model.best()
        when = ts_ms - self.rng.randint(0, 300)  # OKX does not promise time order
        family = "-".join(self.inst.split("-")[:2])
        detail = '{"bkLoss":"0","bkPx":"%s","ccy":"","posSide":"%s","side":"%s","sz":"%d","ts":"%d"}' % (  # noqa: UP031
            bid if sell else ask,
            "long" if sell else "short",
            "sell" if sell else "buy",
            self.rng.randint(1, 40),
            when,
        )
        self.publish(
            '{"arg":{"channel":"liquidation-orders","instType":"%s"},"data":[{"details":[%s],'  # noqa: UP031
            '"instFamily":"%s","instId":"%s","instType":"%s","uly":"%s"}]}'
            % (self.inst_type, detail, family, self.inst, self.inst_type, family)
        )
