"""A tape's recent trades, packed, so a simulator that runs for hours holds a small, fixed amount of them.

The REST endpoints (Bybit recent-trade, Binance aggTrades) and `SimServer.generated_trades` read the
history; the feeds append every trade they generate, delivered or not. Rows are kept as tuples only until
`BLOCK_ROWS` of them have gathered, then packed into one `marshal` block: about 65-85 bytes a trade
instead of about 300 as tuples, strings and ints (measured), and a handful of objects per block instead of
three per trade. Whole blocks are dropped from the old end once the newer ones still hold `limit` trades,
so the history always holds the last `limit` trades (all of them until that many were generated) and fewer
than `limit + BLOCK_ROWS`.
"""

from __future__ import annotations

import marshal
from typing import Final

# A generated trade, kept as a plain tuple because the hot path builds hundreds of thousands per second:
# (id, price, size, side, T ms, seq, tick direction, last). `marketflow.sim.market` names the fields.
TradeRow = tuple[str, str, str, str, int, int, str, int]

BLOCK_ROWS: Final = 256  # packing costs ~0.25 µs a trade at this size; smaller blocks cost more per trade


class TradeHistory:
    """The most recent trades of one tape, oldest first, indexed from the oldest kept (see the module)."""

    __slots__ = ("_blocks", "_tail", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._blocks: list[bytes] = []  # each exactly BLOCK_ROWS rows
        self._tail: list[TradeRow] = []  # fewer than BLOCK_ROWS rows, newer than every block

    def __len__(self) -> int:
        return len(self._blocks) * BLOCK_ROWS + len(self._tail)

    @property
    def unpacked(self) -> int:
        """Rows still held as tuples (always fewer than `BLOCK_ROWS`)."""
        return len(self._tail)

    def extend(self, rows: list[TradeRow]) -> None:
        """Append `rows` (newer than everything kept) and forget what the bound no longer covers."""
        limit = self.limit
        if limit <= 0:
            return
        tail = self._tail
        tail += rows
        blocks = self._blocks
        if len(tail) >= BLOCK_ROWS:
            if len(tail) > limit:  # a burst that alone covers the bound: nothing older is needed
                blocks.clear()
                del tail[: len(tail) - limit]
            full = len(tail) - len(tail) % BLOCK_ROWS
            blocks.extend(marshal.dumps(tail[at : at + BLOCK_ROWS]) for at in range(0, full, BLOCK_ROWS))
            del tail[:full]
        surplus = (len(self) - limit) // BLOCK_ROWS
        if surplus > 0:
            del blocks[:surplus]

    def rows(self, start: int = 0, stop: int | None = None) -> list[TradeRow]:
        """Rows `start` to `stop` (0 = the oldest kept), like slicing a list of them."""
        start, stop, _ = slice(start, stop).indices(len(self))
        if start >= stop:
            return []
        packed = len(self._blocks) * BLOCK_ROWS
        out: list[TradeRow] = []
        if start < packed:
            first = start // BLOCK_ROWS
            end = min(stop, packed)
            for block in self._blocks[first : (end - 1) // BLOCK_ROWS + 1]:
                out += marshal.loads(block)
            offset = first * BLOCK_ROWS
            out = out[start - offset : end - offset]
        if stop > packed:
            out += self._tail[max(0, start - packed) : stop - packed]
        return out

    def latest(self, count: int) -> list[TradeRow]:
        """The newest `count` rows (fewer if fewer are kept), oldest first."""
        return self.rows(max(0, len(self) - count)) if count > 0 else []


__all__ = ["BLOCK_ROWS", "TradeHistory", "TradeRow"]
