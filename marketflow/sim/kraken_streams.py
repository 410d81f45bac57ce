"""What Kraken's v2 channels send in the simulator: `trade` rows, `book` windows with their CRC32, `ticker`.

`TradeEncoder` writes `trade` messages (JSON numbers exactly as formatted, RFC 3339 timestamps);
`KrakenBookStream` keeps the window of one depth the client must hold and sends what changed in it, each
message with Kraken's checksum (`checksum_of`, from integer ticks and steps); `KrakenTickerStream` sends the
touch on every change. The conversation (subscribe acks, pings, heartbeats) is `marketflow.sim.kraken`,
which re-exports these names.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from typing import Any

from marketflow.sim.book import BookTick, SimBook
from marketflow.sim.derivs import SENT_KEPT, DerivsModel
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import (
    ROW_ID,
    ROW_PRICE,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Formats,
    FrameSink,
    TradeRow,
    WireFrame,
)

CHECKSUM_LEVELS = 10
_SIDES = {"Buy": "buy", "Sell": "sell"}


def checksum_of(bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> int:
    """Kraken's unsigned CRC32 of the top 10 asks then bids (best first), from ticks and steps: a price
    at its precision with the `.` and leading zeros removed is its tick count, a qty its step count."""
    text = "".join(
        [f"{p}{q}" for p, q in asks[:CHECKSUM_LEVELS]] + [f"{p}{q}" for p, q in bids[:CHECKSUM_LEVELS]]
    )
    return zlib.crc32(text.encode())


_second_text: dict[int, str] = {}


def rfc3339(ms: int) -> str:
    """`2023-09-25T07:49:37.708000Z` (Kraken writes microseconds)."""
    seconds, millis = divmod(ms, 1000)
    head = _second_text.get(seconds)
    if head is None:
        if len(_second_text) > 4096:
            _second_text.clear()
        head = _second_text[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return "%s.%03d000Z" % (head, millis)  # noqa: UP031


# -- trades ----------------------------------------------------------------------------------------------


class TradeEncoder:
    """`trade` messages of one pair: numbers as JSON numbers exactly as formatted (trailing zeros)."""

    def __init__(self, native: str) -> None:
        self.native = native
        self._trade = (
            '{"symbol":"' + native + '","side":"%s","price":%s,"qty":%s,"ord_type":"%s","trade_id":%s,'
            '"timestamp":"%s"}'
        )

    def payload(self, rows: list[TradeRow], kind: str = "update") -> bytes:
        trade = self._trade
        body = ",".join(
            [
                trade
                % (
                    _SIDES[r[ROW_SIDE]],
                    r[ROW_PRICE],
                    r[ROW_SIZE],
                    "limit" if r[ROW_T] % 3 == 0 else "market",
                    r[ROW_ID],
                    rfc3339(r[ROW_T]),
                )
                for r in rows
            ]
        )
        return ('{"channel":"trade","type":"' + kind + '","data":[' + body + "]}").encode()

    def __call__(self, rows: list[TradeRow], ts_ms: int) -> bytes:
        return ws_text_frame(self.payload(rows))


# -- books -----------------------------------------------------------------------------------------------


class KrakenBookStream:
    """`book` at one depth of one pair: the window the client must hold, and what changed in it."""

    def __init__(self, topic: str, depth: int, book: SimBook, quiet: bool) -> None:
        self.topic = topic
        self.depth = depth
        self.book = book
        self.quiet = quiet
        self.formats = Formats(book.instrument)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bad_checksum_next = False
        self.skipped = 0
        self.messages = 0
        self._sinks: set[FrameSink] = set()
        self._skip = 0
        self._symbol = book.symbol

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: publish the book as it is now
            self.bids, self.asks = self.book.top_maps(self.depth)
        self._sinks.add(sink)
        return self._frame("snapshot", self.bids, self.asks, int(time.time_ns() // 1_000_000))

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def _levels(self, levels: list[tuple[int, int]]) -> str:
        price = self.formats.price
        size = self.formats.size
        return ",".join(
            ['{"price":%s,"qty":%s}' % (price(p), size(q) if q else "0") for p, q in levels]  # noqa: UP031
        )

    def checksum(self) -> int:
        bids = sorted(self.bids.items(), reverse=True)[:CHECKSUM_LEVELS]
        asks = sorted(self.asks.items())[:CHECKSUM_LEVELS]
        return checksum_of(bids, asks)

    def _frame(self, kind: str, bids: dict[int, int], asks: dict[int, int], ts_ms: int) -> WireFrame:
        crc = self.checksum()
        if self.bad_checksum_next:
            self.bad_checksum_next = False
            crc ^= 1
        body = (
            '{"channel":"book","type":"%s","data":[{"symbol":"%s","bids":[%s],"asks":[%s],"checksum":%d,'  # noqa: UP031
            '"timestamp":"%s"}]}'
            % (
                kind,
                self._symbol,
                self._levels(sorted(bids.items(), reverse=True)),
                self._levels(sorted(asks.items())),
                crc,
                rfc3339(ts_ms),
            )
        )
        self.messages += 1
        return WireFrame(ws_text_frame(body.encode()), self.topic)

    def _changes(self, before: dict[int, int], now: dict[int, int], full: dict[int, int]) -> dict[int, int]:
        changes = {p: q for p, q in now.items() if before.get(p) != q}
        # Left the window: a real removal says qty 0; a level only pushed below the depth says nothing.
        changes.update({p: 0 for p in before.keys() - now.keys() if p not in full})
        return changes

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self.quiet:
            return
        if tick.skip:
            self._skip += 1
        bids, asks = self.book.top_maps(self.depth)
        bid_changes = self._changes(self.bids, bids, self.book.bids)
        ask_changes = self._changes(self.asks, asks, self.book.asks)
        self.bids, self.asks = bids, asks
        if not bid_changes and not ask_changes:
            return
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return
        frames = [self._frame("update", bid_changes, ask_changes, ts_ms)]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_idle(self, ts_ms: int) -> None:
        """Kraken sends nothing for an unchanged book (the connection's heartbeats keep it alive)."""

    def crossing_outstanding(self) -> bool:
        return False


class KrakenTickerStream:
    """`ticker` of one pair: a snapshot on subscribe, then an update whenever the best bid or ask changes
    (Kraken's `event_trigger: bbo`; its default, per trade, differs only in cadence). Every message carries
    every field; `last` is the tape's latest trade, `volume` the book model's 24 h volume."""

    def __init__(self, topic: str, book: SimBook, tape: Any, quiet: bool) -> None:
        self.topic = topic
        self.book = book
        self.tape = tape
        self.quiet = quiet
        self.model = DerivsModel(book)
        self.sent: deque[str] = deque(maxlen=SENT_KEPT)
        """The payloads published, in order, for tests to check against."""
        self._sinks: set[FrameSink] = set()
        self._last: tuple[str, str, str, str] | None = None

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def _payload(self, kind: str) -> str:
        bid, bid_qty, ask, ask_qty = self._last = self.model.best()
        latest = self.tape.history.latest(1)
        last = latest[0][ROW_PRICE] if latest else self.model.mark()
        mid = self.model.mark()
        payload = (
            '{"channel":"ticker","type":"%s","data":[{"symbol":"%s","bid":%s,"bid_qty":%s,"ask":%s,'  # noqa: UP031
            '"ask_qty":%s,"last":%s,"volume":%s,"vwap":%s,"low":%s,"high":%s,"change":0.0,"change_pct":0.00}]}'
            % (
                kind,
                self.book.symbol,
                bid,
                bid_qty,
                ask,
                ask_qty,
                last,
                self.model.volume_24h(),
                mid,
                bid,
                ask,
            )
        )
        self.sent.append(payload)
        return payload

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        self._sinks.add(sink)
        return WireFrame(ws_text_frame(self._payload("snapshot").encode()), self.topic)

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self.quiet or self.model.best() == self._last:
            return
        frames = [WireFrame(ws_text_frame(self._payload("update").encode()), self.topic)]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_idle(self, ts_ms: int) -> None:
        """Nothing between changes."""

    def crossing_outstanding(self) -> bool:
        return False


__all__ = [
    "CHECKSUM_LEVELS",
    "KrakenBookStream",
    "KrakenTickerStream",
    "TradeEncoder",
    "checksum_of",
    "rfc3339",
]
