"""OKX book integrity: the `seqId`/`prevSeqId` chain and the CRC32 checksum (PROTOCOLS.md §8.4).

Chain, checked on every message that carries it:
- a snapshot (`action: snapshot`, `prevSeqId = -1`) starts it;
- each update's `prevSeqId` must equal the previous message's `seqId` (steps are not +1);
- `prevSeqId == seqId` with no levels is a keep-alive (no depth change for about 60 s); it repeats the
  last `seqId`, so one that does not is a gap too;
- `seqId < prevSeqId` is a reset after maintenance: accepted, the chain goes on from the new `seqId`;
- anything else is a gap: the book is discarded (nothing built across it is served or stored) and the
  keeper resubscribes that instrument alone, which brings a fresh snapshot.

No WebSocket snapshot (OKX's changelog, "Delist initial snapshot and checksum field in order book
channels", last updated 2026-02-12, announces that `books`/`books-l2-tbt`/`books50-l2-tbt` will stop
sending it and says to take it from `GET /api/v5/market/books`): while the book waits, updates that carry
`seqId`/`prevSeqId` are buffered and `needs_snapshot()` asks the keeper for a REST snapshot. Aligned as
OKX's recipe says: buffered updates with `seqId <= snapshot seqId` are dropped; the first kept one must
satisfy `prevSeqId <= snapshot seqId < seqId` (a snapshot older than the first buffered update is refused
and fetched again); then the chain goes on as above. When no buffered update is newer than the snapshot
(the REST answer overtook the stream), updates still on their way with `seqId <=` its `seqId` are dropped
as stale, and the first newer one bridges it by the same rule. A WebSocket snapshot, whenever one comes, still
replaces the book at once (today's behaviour), and a REST one arriving on a synced book is ignored.

Checksum: CRC32 of the top 25 levels interleaved `bidPx:bidSz:askPx:askSz:...` (the longer side's rest
appended), over the strings **exactly as received**, compared as a signed int32. Verified whenever a
message carries a non-zero one: OKX sends 0 since 2026-06, recorded traffic still carries it. A message
without `seqId`/`prevSeqId` (older servers, recorded traffic) is checked by its checksum alone.

Exactness and speed: the `OrderBook` keeps `Decimal`s (which forget how a price was written: `65000.10`
and `65000.1` are one level), so next to it this book keeps, per side, price → `px:sz` exactly as
received. An update costs one concatenation and one dict store per level it changes; a checksum reads the
top 25 prices of the `OrderBook` and joins their strings — no formatting, no float. Those strings are kept
only from a snapshot that carries a checksum (half the apply cost; live OKX sends 0): if a non-zero one
then arrives on a book whose snapshot had none, the book cannot verify it, so it resyncs once and keeps
the strings from the next snapshot on, whatever that one carries.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal

from marketflow.exchanges.okx.frames import OkxBookUpdate, RawLevel
from marketflow.exchanges.orderbook import DEFAULT_MAX_BUFFER, BookState, Gap, RestSnapshotBook
from marketflow.model import BookUpdate, Level

CHECKSUM_LEVELS = 25


def checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    """OKX's signed CRC32 of the best 25 levels per side (bids descending, asks ascending), given as
    `[px, sz, ...]` string lists exactly as received."""
    return _crc(
        [level[0] + ":" + level[1] for level in bids[:CHECKSUM_LEVELS]],
        [level[0] + ":" + level[1] for level in asks[:CHECKSUM_LEVELS]],
    )


def _crc(bids: list[str], asks: list[str]) -> int:
    """The signed CRC32 of `px:sz` strings (best first, at most 25 a side) interleaved bid, ask, ...; the
    longer side's rest appended."""
    n = min(len(bids), len(asks))
    parts = [""] * (2 * n)
    parts[::2] = bids[:n]
    parts[1::2] = asks[:n]
    parts += bids[n:] or asks[n:]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 0x1_0000_0000 if crc >= 0x8000_0000 else crc


def _apply_raw(raw: dict[Decimal, str], levels: list[Level], received: list[RawLevel]) -> None:
    # Kept joined (`px:sz`): a message changes a few levels, a checksum reads fifty.
    for (price, amount), text in zip(levels, received, strict=True):
        if amount:
            raw[price] = text.px + ":" + text.sz
        else:
            raw.pop(price, None)


class OkxBook(RestSnapshotBook[OkxBookUpdate]):
    """One OKX instrument's book under the chain and checksum rules (see the module docstring)."""

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_buffer=max_buffer)
        self._bridge: int | None = None
        """A REST snapshot's seqId no update has continued yet (see `on_update`)."""
        self._raw_bids: dict[Decimal, str] = {}
        self._raw_asks: dict[Decimal, str] = {}
        self._keep_raw = False
        """The `px:sz` strings are kept since the last snapshot (it carried a checksum, or one was seen)."""
        self._checksums_seen = False
        """A non-zero checksum came on this book once: keep the strings from every later snapshot."""
        self.keepalives = 0
        self.seq_resets = 0
        self.checksums_verified = 0
        self.checksum_failures = 0

    def reset(self) -> None:
        super().reset()
        self._raw_bids = {}
        self._raw_asks = {}
        self._keep_raw = False
        self._bridge = None

    def on_snapshot(self, update: BookUpdate) -> Gap | None:
        """A REST snapshot (`GET /api/v5/market/books`, `last_id` = its `seqId`): aligned with the buffered
        updates (see the module docstring); ignored on a synced book, refused when too old."""
        if not isinstance(update, OkxBookUpdate):
            raise TypeError(f"OkxBook takes OkxBookUpdate, got {type(update).__name__}")
        self._pending = False  # answered, whatever happens to it (a WebSocket snapshot may have come first)
        if self.state is BookState.SYNCED:
            self._snapshots_ignored += 1
            return None
        snapshot_id = update.last_id
        buffer = self._buffer
        if buffer and buffer[0].prev_id is not None and snapshot_id < buffer[0].prev_id:
            self._too_old += 1
            return None
        keep = [event for event in buffer if event.last_id > snapshot_id]
        self._stale += len(buffer) - len(keep)
        self._buffer = []
        self._raw_bids = {}
        self._raw_asks = {}
        self._keep_raw = False  # a REST snapshot carries no checksum
        gap = self._set_snapshot(update)
        if gap is not None:
            return gap
        # Nothing buffered is newer: the REST answer overtook the stream, whose older updates may still be
        # on their way (`on_update` drops them, and lets the first newer one bridge the snapshot).
        self._bridge = None if keep else snapshot_id
        if keep and not (keep[0].prev_id is not None and keep[0].prev_id <= snapshot_id):
            return self._fail(
                f"first update after REST snapshot {snapshot_id} has prevSeqId {keep[0].prev_id}", keep[0]
            )
        for index, event in enumerate(keep):
            if index == 0:  # bridges the snapshot: prevSeqId <= snapshot seqId < seqId
                gap = self._apply(event)
                gap = gap if gap is not None else self._verify(event)
            else:
                gap = self.on_update(event)
            if gap is not None:
                return gap
        return None

    def on_update(self, update: BookUpdate) -> Gap | None:
        if not isinstance(update, OkxBookUpdate):
            raise TypeError(f"OkxBook takes OkxBookUpdate, got {type(update).__name__}")
        if update.snapshot:
            self._buffer = []  # a WebSocket snapshot starts the book by itself
            self._bridge = None
            self._raw_bids = {}
            self._raw_asks = {}
            self._keep_raw = keep = self._checksums_seen or bool(update.checksum)
            if keep:
                _apply_raw(self._raw_bids, update.bids, update.raw_bids)
                _apply_raw(self._raw_asks, update.asks, update.raw_asks)
            gap = self._set_snapshot(update)
            return gap if gap is not None else self._verify(update)
        if self.state is not BookState.SYNCED:
            if update.prev_id is None:  # no chain (older servers): only a snapshot can start this book
                self._ignored += 1
            elif len(self._buffer) >= self.max_buffer:
                self._ignored += len(self._buffer)
                self._buffer = [update]
            else:
                self._buffer.append(update)
            return None
        seq = update.last_id
        prev = update.prev_id
        if prev is not None and self._bridge is not None:
            if prev < seq <= self._bridge:  # sent before the REST snapshot was taken: it holds it already
                self._stale += 1
                return None
            if prev < self._bridge < seq:  # bridges it: prevSeqId <= snapshot seqId < seqId
                prev = self._id
            self._bridge = None
        if prev is not None:
            if prev == seq and not update.bids and not update.asks:
                if seq != self._id:  # it repeats the last seqId: any other means messages were lost
                    return self._fail(f"keep-alive seqId {seq} is not the last seqId {self._id}", update)
                self.keepalives += 1
                return self._verify(update)
            if seq < prev:
                self.seq_resets += 1
            elif prev != self._id:
                return self._fail(f"prevSeqId {prev} is not the last seqId {self._id}", update)
        if self._keep_raw:
            _apply_raw(self._raw_bids, update.bids, update.raw_bids)
            _apply_raw(self._raw_asks, update.asks, update.raw_asks)
        gap = self._apply(update)
        return gap if gap is not None else self._verify(update)

    def _verify(self, update: OkxBookUpdate) -> Gap | None:
        expected = update.checksum
        if not expected:
            return None
        if not self._keep_raw:
            self._checksums_seen = True
            return self._fail(
                f"checksum {expected} sent with seqId {update.last_id}, but the snapshot carried none: "
                "resyncing to verify from the next snapshot",
                update,
            )
        bids, asks = self.book.top_prices(CHECKSUM_LEVELS)
        got = _crc(list(map(self._raw_bids.__getitem__, bids)), list(map(self._raw_asks.__getitem__, asks)))
        self.checksums_verified += 1
        if got != expected:
            self.checksum_failures += 1
            return self._fail(
                f"checksum {got} is not the {expected} sent with seqId {update.last_id}", update
            )
        return None

    def _fail(self, reason: str, update: BookUpdate) -> Gap:
        self._bridge = None
        self._raw_bids = {}
        self._raw_asks = {}
        self._keep_raw = False
        return super()._fail(reason, update)
