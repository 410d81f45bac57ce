"""Coinbase's book rule: `level2` snapshots and absolute updates, continuity from the connection's
`sequence_num` (there is no per-product sequence); resync by resubscribing (PROTOCOLS.md §9.3, §9.4)."""

from __future__ import annotations

from marketflow.exchanges.orderbook import BookState, BookSync, Gap
from marketflow.model import BookUpdate


class CoinbaseBook(BookSync):
    """One product's `level2` book.

    The decoder gives every update its message's `sequence_num` (`first_id` = `last_id`) and its epoch
    (`prev_id`: how many sequence gaps the connection's decoder has seen). A gap marker (`first_id` !=
    `last_id`, no levels) fails the book whatever its state, so even a lost snapshot is asked for again;
    an update of another epoch than the book's snapshot would be built across a loss and fails too.
    Updates before the first snapshot are ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch: int | None = None

    def on_update(self, update: BookUpdate) -> Gap | None:
        if update.first_id != update.last_id:
            lost = update.last_id - update.first_id - 1
            return self._fail(
                f"sequence_num jumped from {update.first_id} to {update.last_id} on the connection "
                f"({lost} message{'' if lost == 1 else 's'} lost)",
                update,
            )
        if update.snapshot:
            gap = self._set_snapshot(update)
            self._epoch = update.prev_id
            return gap
        if self.state is not BookState.SYNCED:
            self._ignored += 1
            return None
        if update.prev_id != self._epoch:
            return self._fail(
                f"update {update.last_id} comes after a sequence gap the book has not seen", update
            )
        return self._apply(update)

    def on_snapshot(self, update: BookUpdate) -> Gap | None:
        return self.on_update(update)
