"""OKX `books` and `books5` streams on the simulator (PROTOCOLS.md §8): sequence ids, keep-alives,
checksums and the book faults; and `OkxRules`, what the venue lists and how its books behave."""

from __future__ import annotations

import random
import time
import zlib

import attrs
import trio

from marketflow.sim.book import BookTick, Crossing, SimBook
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import (
    Formats,
    FrameSink,
    WireFrame,
    stable_crc,
)

BOOK_DEPTHS = {"books": 400, "books5": 5}
CHECKSUM_LEVELS = 25
SEQ_BASE = 10_000_000_000
RESET_SEQ = 1_000
KEEPALIVE_S = 60.0


def checksum_of(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX's signed CRC32 of the top 25 levels per side, best first (the simulator's own copy)."""
    parts: list[str] = []
    for i in range(min(max(len(bids), len(asks)), CHECKSUM_LEVELS)):
        if i < len(bids):
            parts += bids[i]
        if i < len(asks):
            parts += asks[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


# -- books -----------------------------------------------------------------------------------------------


@attrs.frozen
class OkxRules:
    """What the venue lists and refuses, and how its books behave, from the simulator's config."""

    instruments: dict[str, str]
    reject_topics: frozenset[str] = frozenset()
    zero_checksum: bool = False
    legacy_books: bool = False
    keepalive_s: float = KEEPALIVE_S
    book_rate: float = 10.0
    out_of_order_every: int | None = None
    no_book_snapshot: bool = False
    """`books` sends no snapshot on subscribe, only updates (OKX's announced delisting of it): clients
    take the snapshot from `/api/v5/market/books`, whose answer then carries the stream's `seqId`."""


class OkxBookStream:
    """`books` (400 levels, increments) or `books5` (5-level snapshots) of one instrument."""

    def __init__(self, channel: str, book: SimBook, rules: OkxRules) -> None:
        self.channel = channel
        self.depth = BOOK_DEPTHS[channel]
        self.book = book
        self.rules = rules
        self.formats = Formats(book.instrument)
        inst = book.symbol
        self.topic = channel + ":" + inst
        self._rng = random.Random(f"okx-seq:{self.topic}:{book.category}")
        self.seq = SEQ_BASE + stable_crc(self.topic) % 1_000_000_000
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bad_checksum_next = False
        self.keepalive_next = False
        self.keepalives = 0
        self.skipped = 0
        self._skip = 0
        self._crossing = Crossing()
        self._cross_size = max(1, int(book.instrument.mean_size_steps))
        self._sinks: set[FrameSink] = set()
        self._last_sent = trio.current_time()
        self._head = '{"arg":{"channel":"' + channel + '","instId":"' + inst + '"}'

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: publish the book as it is now
            self.bids, self.asks = self.book.top_maps(self.depth)
            self.seq += 1 + int(self._rng.random() * 50)
        self._sinks.add(sink)
        if self.rules.no_book_snapshot and self.channel == "books":
            return None
        return self._frame("snapshot", self.bids, self.asks, -1, self.seq, self._now_ms())

    def published(self, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
        """The best `depth` bid and ask levels as last published (text), and the `seqId` they are at."""
        bids = sorted(self.bids.items(), reverse=True)[:depth]
        asks = sorted(self.asks.items())[:depth]
        return self._text(bids), self._text(asks), self.seq

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000

    def _text(self, levels: list[tuple[int, int]]) -> list[tuple[str, str]]:
        formats = self.formats
        return [(formats.price(p), formats.size(q) if q else "0") for p, q in levels]

    def _levels(self, levels: list[tuple[str, str]]) -> str:
        return ",".join([f'["{p}","{q}","0","{0 if q == "0" else 1 + len(q) % 5}"]' for p, q in levels])

    def _frame(
        self, action: str, bids: dict[int, int], asks: dict[int, int], prev: int, seq: int, ts: int
    ) -> WireFrame:
        bid_text = self._text(sorted(bids.items(), reverse=True))
        ask_text = self._text(sorted(asks.items()))
        if self.rules.zero_checksum:
            crc = 0
        else:
            top_bids, top_asks = sorted(self.bids, reverse=True), sorted(self.asks)
            crc = checksum_of(
                self._text([(p, self.bids[p]) for p in top_bids[:CHECKSUM_LEVELS]]),
                self._text([(p, self.asks[p]) for p in top_asks[:CHECKSUM_LEVELS]]),
            )
            if self.bad_checksum_next:
                self.bad_checksum_next = False
                crc = crc + 1 if crc != -1 else 1
        head = self._head
        if self.channel == "books":
            head += ',"action":"' + action + '"'
        body = (
            head
            + ',"data":[{"asks":['
            + self._levels(ask_text)
            + '],"bids":['
            + self._levels(bid_text)
            + '],"ts":"%d"' % ts  # noqa: UP031
        )
        if self.channel == "books":
            body += ',"checksum":%d' % crc  # noqa: UP031
            if not self.rules.legacy_books:
                body += ',"prevSeqId":%d,"seqId":%d' % (prev, seq)  # noqa: UP031
        else:
            body += ',"instId":"%s","seqId":%d' % (self.book.symbol, seq)  # noqa: UP031
        self._last_sent = trio.current_time()
        return WireFrame(ws_text_frame((body + "}]}").encode()), self.topic)

    def _publish(self, frame: WireFrame) -> None:
        frames = [frame]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if tick.skip:
            self._skip += 1
        crossing = self._crossing
        crossing.pending = crossing.pending or tick.cross
        bids, asks = self.book.top_maps(self.depth)
        bid_changes = {p: q for p, q in bids.items() if self.bids.get(p) != q}
        bid_changes.update({p: 0 for p in self.bids.keys() - bids.keys()})
        ask_changes = {p: q for p, q in asks.items() if self.asks.get(p) != q}
        ask_changes.update({p: 0 for p in self.asks.keys() - asks.keys()})
        if not bid_changes and not ask_changes and not crossing.outstanding and not tick.restart:
            return
        prev = self.seq
        if tick.restart:  # maintenance: the sequence starts again below where it was
            self.seq = RESET_SEQ + int(self._rng.random() * 1000)
        else:
            self.seq += 1 + int(self._rng.random() * 50)
        self.bids, self.asks = bids, asks
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return
        if self.channel == "books5":
            self._publish(self._frame("snapshot", bids, asks, prev, self.seq, ts_ms))
            return
        if crossing.outstanding:
            crossing.apply(bids, min(asks), self._cross_size, bid_changes)
        self._publish(self._frame("update", bid_changes, ask_changes, prev, self.seq, ts_ms))

    def on_idle(self, ts_ms: int) -> None:
        """No change for `keepalive_s`: `prevSeqId == seqId` with no levels."""
        due = trio.current_time() - self._last_sent >= self.rules.keepalive_s
        if self.channel == "books" and (due or self.keepalive_next):
            self.keepalive_next = False
            self.keepalives += 1
            self._publish(self._frame("update", {}, {}, self.seq, self.seq, ts_ms))

    def crossing_outstanding(self) -> bool:
        return self._crossing.outstanding


# -- the WebSocket session ---------------------------------------------------------------------------
