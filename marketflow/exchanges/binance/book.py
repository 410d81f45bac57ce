"""Binance's book rules: diff-depth events bridged from a REST snapshot (spot and USD-M differ)."""

from __future__ import annotations

from marketflow.exchanges.orderbook import DEFAULT_MAX_BUFFER, BookState, Gap, RestSnapshotBook
from marketflow.model import BookUpdate


class _BinanceBook(RestSnapshotBook[BookUpdate]):
    """Buffer events until a REST snapshot arrives, then bridge from it and follow the live rule.

    Subclasses give the two venue rules: which event is stale against the snapshot, whether the first
    kept event bridges the snapshot, and how each later event must continue the previous one.
    """

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_buffer=max_buffer)
        # True from a snapshot until the first event after it has been applied.
        self._bridging = False

    def reset(self) -> None:
        super().reset()
        self._bridging = False

    def on_update(self, update: BookUpdate) -> Gap | None:
        if update.snapshot:
            return self.on_snapshot(update)
        if self.state is BookState.SYNCED:
            gap = self._live(update)
            if gap is not None:
                # The offending event is a real event of the stream: the next snapshot is checked against it.
                self._buffer = [update]
            return gap
        buffer = self._buffer
        if len(buffer) >= self.max_buffer:
            self._buffer = [update]
            return self._fail(f"{len(buffer)} events buffered without a snapshot", update)
        buffer.append(update)
        return None

    def on_snapshot(self, update: BookUpdate) -> Gap | None:
        """Apply a REST snapshot (`last_id` = `lastUpdateId`) and replay the buffered events on it.

        A snapshot older than the first buffered event is refused (returns None, `needs_snapshot()`
        asks again): it cannot be bridged. One arriving while already synced is ignored.
        """
        if self.state is BookState.SYNCED:
            self._snapshots_ignored += 1
            return None
        self._pending = False
        snapshot_id = update.last_id
        buffer = self._buffer
        if buffer and snapshot_id < buffer[0].first_id:
            self._too_old += 1
            return None
        keep = [event for event in buffer if not self._stale_at_snapshot(event, snapshot_id)]
        self._stale += len(buffer) - len(keep)
        self._buffer = []
        gap = self._set_snapshot(update)
        if gap is not None:
            self._buffer = keep
            return gap
        self._bridging = True
        for index, event in enumerate(keep):
            gap = self._live(event)
            if gap is not None:
                self._buffer = keep[index:]
                return gap
        return None

    def _fail(self, reason: str, update: BookUpdate) -> Gap:
        self._bridging = False
        return super()._fail(reason, update)

    def _live(self, event: BookUpdate) -> Gap | None:
        """Apply, drop as stale, or report a gap, for one event on a synced book."""
        raise NotImplementedError

    def _stale_at_snapshot(self, event: BookUpdate, snapshot_id: int) -> bool:
        raise NotImplementedError


class BinanceSpotBook(_BinanceBook):
    """Binance spot `<symbol>@depth` with a REST snapshot (PROTOCOLS §2.6, the official algorithm).

    Events with `u <= lastUpdateId` are dropped; the first kept one must satisfy
    `U <= lastUpdateId + 1 <= u`. Then each event: `u <` book id → stale, ignored; `U >` book id + 1 →
    gap; else applied and the book id becomes `u`.
    """

    def _stale_at_snapshot(self, event: BookUpdate, snapshot_id: int) -> bool:
        return event.last_id <= snapshot_id

    def _live(self, event: BookUpdate) -> Gap | None:
        book_id = self._id
        if self._bridging:
            if event.last_id <= book_id:
                self._stale += 1
                return None
            if event.first_id > book_id + 1:
                return self._fail(
                    f"first event after snapshot {book_id} starts at {event.first_id}, after {book_id + 1}",
                    event,
                )
            self._bridging = False
            return self._apply(event)
        if event.last_id < book_id:
            self._stale += 1
            return None
        if event.first_id > book_id + 1:
            return self._fail(f"update id jumped from {book_id} to {event.first_id}", event)
        return self._apply(event)


class BinanceUsdmBook(_BinanceBook):
    """Binance USD-M `<symbol>@depth` with a REST snapshot (PROTOCOLS §3).

    Events with `u < lastUpdateId` are dropped; the first kept one must satisfy
    `U <= lastUpdateId <= u`. After that each event's `pu` must equal the previous event's `u`; `U` is
    not contiguous on USD-M and is never checked against the previous `u`. An event whose `u` is not
    past the book's is a repeat (a replacement connection's overlap) and is dropped as stale.
    """

    def _stale_at_snapshot(self, event: BookUpdate, snapshot_id: int) -> bool:
        return event.last_id < snapshot_id

    def _live(self, event: BookUpdate) -> Gap | None:
        book_id = self._id
        if self._bridging:
            if event.last_id < book_id:
                self._stale += 1
                return None
            if event.first_id > book_id:
                return self._fail(
                    f"first event after snapshot {book_id} spans {event.first_id}..{event.last_id}",
                    event,
                )
            self._bridging = False
            return self._apply(event)
        if event.last_id <= book_id:
            # A repeat of an event already applied: the overlap of a connection and its replacement.
            self._stale += 1
            return None
        if event.prev_id != book_id:
            return self._fail(f"previous update id {event.prev_id} is not the last one {book_id}", event)
        return self._apply(event)
