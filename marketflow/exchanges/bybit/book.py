"""Bybit's book rule: WebSocket snapshots and deltas with `u` stepping by one; resync by resubscribing."""

from __future__ import annotations

from marketflow.exchanges.orderbook import BookState, BookSync, Gap
from marketflow.model import BookUpdate


class BybitBook(BookSync):
    """Bybit v5 `orderbook.{depth}` (PROTOCOLS §1.6).

    A snapshot (or `u == 1`, which the decoder marks as one) replaces the book; each delta must carry
    `u == previous u + 1` (observed, not documented: a failure means resubscribe, which brings a fresh
    snapshot). Deltas without a snapshot to apply them to are ignored. Depth 1 re-sends its snapshot
    with an unchanged `u`; that is accepted like any snapshot.
    """

    def on_update(self, update: BookUpdate) -> Gap | None:
        if update.snapshot:
            return self._set_snapshot(update)
        if self.state is not BookState.SYNCED:
            self._ignored += 1
            return None
        if update.last_id != self._id + 1:
            return self._fail(f"update id jumped from {self._id} to {update.last_id}", update)
        return self._apply(update)

    def on_snapshot(self, update: BookUpdate) -> Gap | None:
        return self._set_snapshot(update)
