"""Kraken v2 book integrity: the CRC32 of the top 10, verified on every message (PROTOCOLS.md §10.4).

Kraken's `book` messages carry no sequence number, only a checksum, sent with snapshots and updates alike:
1. apply every level of the message to the local book (qty 0 deletes), then truncate each side to the
   subscribed depth: a level pushed out of scope gets no qty-0 message;
2. take the top 10 asks (ascending) then the top 10 bids (descending); render each price at the pair's
   `price_precision` and each qty at its `qty_precision`, remove the `.` and strip leading zeros;
3. CRC32 of the concatenation, unsigned, must equal the message's `checksum`.
Rendering is from the exact `Decimal` at the pair's precision, never from the wire digits (older feeds sent
more decimals than the precision) and never through a float.

The precisions come with every update (`KrakenBookUpdate`, filled by the decoder from the `instrument`
channel). Until they are known a book is kept but not served: it stays WAITING and becomes SYNCED at the
first message whose checksum matches. A mismatch discards the book (a `Gap`); the keeper resubscribes the
symbol alone, which brings a fresh snapshot at the same depth.

Depth: messages do not say which depth was subscribed; the keeper passes the feed's `book_depth`. Without
it (a book made alone) the depth is inferred: a snapshot holds `min(depth, levels the venue has)` per side,
so it is the smallest allowed one holding the snapshot's longer side. A thin book below a smaller allowed
depth is then truncated too early; the book stays an exact prefix of the venue's, and if it thins into
the top 10 the checksum fails and the new snapshot (deeper by then) corrects the depth.

A checksum that keeps failing must not make a resubscribe loop: after `MAX_FAILURES` consecutive failures
the book waits `RETRY_BASE_US` (doubling up to `RETRY_MAX_US`, counted in the messages' receive times)
before it asks again, ignoring the stream meanwhile; the gap stays open in the ledger all that time.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal

from marketflow.exchanges.orderbook import BookState, BookSync, Gap
from marketflow.model import BookUpdate, Level

DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
MAX_FAILURES = 3
"""Consecutive checksum failures resynced at once; later ones wait (nautilus stops at 3)."""
RETRY_BASE_US = 1_000_000
RETRY_MAX_US = 60_000_000
PRICE_TEXTS_MAX = 4096
"""Rendered prices a book keeps before it starts over."""


class KrakenBookUpdate(BookUpdate, frozen=True, gc=False):
    """A Kraken book message with the pair's precisions (-1: not known yet)."""

    price_precision: int = -1
    qty_precision: int = -1


def render(value: Decimal, precision: int) -> str:
    """Kraken's checksum text of a number: at `precision` decimals, `.` removed, leading zeros stripped
    (`45285.2` at 1 → `452852`; `0.00100000` at 8 → `100000`)."""
    return str(int(value.scaleb(precision)))


def render_qty(value: Decimal, precision: int) -> str:
    """`render`, reading `str(value)` when it already has exactly `precision` decimals (the usual case:
    the venue writes quantities at the pair's precision), which is cheaper than scaling."""
    text = str(value)
    if len(text) > precision and text[-precision - 1] == "." and "E" not in text:
        return text.replace(".", "").lstrip("0") or "0"
    return str(int(value.scaleb(precision)))


def checksum(bids: Sequence[Level], asks: Sequence[Level], price_precision: int, qty_precision: int) -> int:
    """The unsigned CRC32 of the best 10 asks then the best 10 bids (`bids` descending, `asks` ascending)."""
    parts = [render(p, price_precision) + render(q, qty_precision) for p, q in asks[:CHECKSUM_LEVELS]]
    parts += [render(p, price_precision) + render(q, qty_precision) for p, q in bids[:CHECKSUM_LEVELS]]
    return zlib.crc32("".join(parts).encode())


def depth_for(levels: int) -> int:
    """The smallest subscribable depth that holds `levels` per side."""
    return next((d for d in DEPTHS if d >= levels), DEPTHS[-1])


class KrakenBook(BookSync):
    """One Kraken pair's book under the checksum rule (see the module docstring)."""

    def __init__(self, depth: int | None = None) -> None:
        super().__init__()
        if depth is not None and depth not in DEPTHS:
            raise ValueError(f"kraken book depth must be one of {list(DEPTHS)}, got {depth}")
        self.subscribed_depth = depth
        """The depth subscribed (None: inferred from each snapshot, see the module docstring)."""
        self.depth = DEPTHS[0] if depth is None else depth
        self.checksums_verified = 0
        self.checksum_failures = 0
        self.consecutive_failures = 0
        self.retry_at: int | None = None
        self._held = False  # a book is kept but not yet verified (precisions unknown)
        self._resyncing = False
        self._precision = (-1, -1)
        # price → rendered `price+qty` text per side, for the levels in the book (checksum input).
        self._text_bids: dict[Decimal, str] = {}
        self._text_asks: dict[Decimal, str] = {}
        # price → its rendered text, whatever the side: prices repeat message after message.
        self._price_texts: dict[Decimal, str] = {}
        # The checksum input of each side's top 10 as last verified (None: to be made again). A side with
        # no level in a message keeps its top 10 (truncation keeps at least 10), so its part is reused.
        self._part_asks: bytes | None = None
        self._part_bids: bytes | None = None

    def reset(self) -> None:
        super().reset()
        self._held = False
        self._forget_texts()

    def _forget_texts(self) -> None:
        self._text_bids = {}
        self._text_asks = {}
        self._part_asks = None
        self._part_bids = None

    def on_snapshot(self, update: BookUpdate) -> Gap | None:
        return self.on_update(update)

    def on_update(self, update: BookUpdate) -> Gap | None:
        if not isinstance(update, KrakenBookUpdate):
            raise TypeError(f"KrakenBook takes KrakenBookUpdate, got {type(update).__name__}")
        if self.retry_at is not None:
            if update.recv_ts < self.retry_at:
                self._ignored += 1
                return None
            self.retry_at = None
            return self._fail(
                f"checksum failed {self.consecutive_failures} times in a row; resubscribing again", update
            )
        book = self.book
        if update.snapshot:
            self._resyncing = self._resyncing or self.state is BookState.RESYNCING
            book.replace(update.bids, update.asks)
            if self.subscribed_depth is None:
                self.depth = depth_for(max(len(update.bids), len(update.asks)))
            book.truncate(self.depth)
            self._id = update.last_id
            self._snapshots += 1
            self._held = True
            self.state = BookState.WAITING
            self._precision = (-1, -1)  # texts rebuilt below
        elif self.state is BookState.SYNCED or self._held:
            book.apply(update.bids, update.asks)
            book.truncate(self.depth)
            self._id = update.last_id
            self._applied += 1
        else:
            self._ignored += 1
            return None
        if book.crossed():
            self._held = False
            return self._fail_crossed(update)
        precision = (update.price_precision, update.qty_precision)
        if precision[0] < 0 or precision[1] < 0:
            if self.state is BookState.SYNCED:  # precisions forgotten: cannot check, so cannot serve
                self.state = BookState.WAITING
                self._held = True
            self._precision = (-1, -1)  # levels applied without their texts: all made again later
            return None
        if precision != self._precision or update.snapshot:
            self._rebuild(precision)
        else:
            if update.bids:
                self._texts(self._text_bids, update.bids)
                self._part_bids = None
            if update.asks:
                self._texts(self._text_asks, update.asks)
                self._part_asks = None
        return self._verify(update)

    def _texts(self, texts: dict[Decimal, str], levels: list[Level]) -> None:
        price_texts = self._price_texts
        qp = self._precision[1]
        dot = -qp - 1
        for price, qty in levels:
            if qty:
                text = price_texts.get(price) or self._price_text(price)
                # `render_qty` inlined: the quantity's own text when it has exactly `qp` decimals.
                qty_text = str(qty)
                if len(qty_text) > qp and qty_text[dot] == "." and "E" not in qty_text:
                    texts[price] = text + (qty_text.replace(".", "").lstrip("0") or "0")
                else:
                    texts[price] = text + str(int(qty.scaleb(qp)))
            else:
                texts.pop(price, None)
        if len(texts) > 2 * self.depth + 64:  # levels truncated away: drop their texts now and then
            self._rebuild(self._precision)

    def _price_text(self, price: Decimal) -> str:
        price_texts = self._price_texts
        if len(price_texts) >= PRICE_TEXTS_MAX:
            price_texts.clear()
        text = price_texts[price] = render(price, self._precision[0])
        return text

    def _rebuild(self, precision: tuple[int, int]) -> None:
        if precision != self._precision:
            self._price_texts = {}
            self._precision = precision
        self._part_asks = None
        self._part_bids = None
        qp = precision[1]
        price_text = self._price_texts.get
        bids, asks = self.book.levels()
        self._text_bids = {p: (price_text(p) or self._price_text(p)) + render_qty(q, qp) for p, q in bids}
        self._text_asks = {p: (price_text(p) or self._price_text(p)) + render_qty(q, qp) for p, q in asks}

    def _verify(self, update: KrakenBookUpdate) -> Gap | None:
        asks_part = self._part_asks
        bids_part = self._part_bids
        if asks_part is None or bids_part is None:
            bids, asks = self.book.top_prices(CHECKSUM_LEVELS)
            if asks_part is None:
                asks_part = self._part_asks = "".join(map(self._text_asks.__getitem__, asks)).encode()
            if bids_part is None:
                bids_part = self._part_bids = "".join(map(self._text_bids.__getitem__, bids)).encode()
        got = zlib.crc32(bids_part, zlib.crc32(asks_part))
        self.checksums_verified += 1
        expected = update.checksum
        if got != expected:
            self.checksum_failures += 1
            self.consecutive_failures += 1
            if self.consecutive_failures > MAX_FAILURES:
                shift = min(self.consecutive_failures - MAX_FAILURES - 1, 6)
                self.retry_at = update.recv_ts + min(RETRY_BASE_US << shift, RETRY_MAX_US)
                self._held = False
                self.book.clear()
                self._forget_texts()
                self.state = BookState.RESYNCING
                self._ignored += 1
                self._resyncing = True
                return None
            return self._fail(f"checksum {got} is not the {expected} sent (message {update.last_id})", update)
        self.consecutive_failures = 0
        if self._held:
            self._held = False
            if self._resyncing:
                self._resyncs += 1
                self._resyncing = False
            self.state = BookState.SYNCED
        return None

    def _fail(self, reason: str, update: BookUpdate) -> Gap:
        self._held = False
        self._resyncing = True
        self._forget_texts()
        return super()._fail(reason, update)
