"""The normalizer actor: raw frames from every feed → normalized batches on the trade and book buses.

Decoding happens here, once, straight into venue Structs (the feeds only tell data from control frames).
Everything drained from the raw bus in one wake-up becomes one published batch per bus. Trade-id gaps the
decoders notice are handed to `on_trade_gaps` (the backfiller) without waiting.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from marketflow.exchanges.base import Decoded, FrameDecoder, TradeGap
from marketflow.model import BookUpdate, RawFrames, Trade
from marketflow.runtime.bus import Bus, Subscription, receive_batches


@attrs.frozen
class DecoderStatistics:
    frames: int
    trades: int
    book_updates: int
    duplicates: int
    malformed: int
    unknown_topics: int
    ignored: int
    last_error: str | None


@attrs.frozen
class NormalizerStatistics:
    name: str
    batches: int
    trades: int
    book_updates: int
    trade_gaps: int
    unknown_feed_frames: int
    feeds: dict[str, DecoderStatistics]


class Normalizer:
    """Decodes `RawFrames` with the decoder registered for their feed and publishes the trades."""

    def __init__(
        self,
        raw: Subscription[RawFrames],
        trades: Bus[Trade],
        decoders: dict[str, FrameDecoder],
        *,
        books: Bus[BookUpdate] | None = None,
        on_trade_gaps: Callable[[list[TradeGap]], None] | None = None,
        name: str = "normalizer",
    ) -> None:
        self.name = name
        self._raw = raw
        self._trades = trades
        self._books = books
        self._on_trade_gaps = on_trade_gaps
        self._book_count = 0
        self._gap_count = 0
        # Shared with the daemon, which adds and removes decoders as feeds come and go.
        self._decoders = decoders
        self._batches = 0
        self._trade_count = 0
        self._unknown_feed_frames = 0

    def statistics(self) -> NormalizerStatistics:
        feeds = {
            name: DecoderStatistics(
                c.frames,
                c.trades,
                c.book_updates,
                c.duplicates,
                c.malformed,
                c.unknown_topics,
                c.ignored,
                c.last_error,
            )
            for name, c in ((n, d.counters) for n, d in self._decoders.items())
        }
        return NormalizerStatistics(
            self.name,
            self._batches,
            self._trade_count,
            self._book_count,
            self._gap_count,
            self._unknown_feed_frames,
            feeds,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        receiver = self._raw.receiver()
        decoders = self._decoders
        task_status.started()
        with receiver:
            while True:
                try:
                    batches = await receive_batches(receiver)
                except trio.EndOfChannel:
                    return
                out = Decoded()
                for batch in batches:
                    for raw in batch:
                        decoder = decoders.get(raw.feed)
                        if decoder is None:
                            self._unknown_feed_frames += len(raw.frames)
                            continue
                        decoder.decode(raw.frames, raw.recv_ts, out)
                self._batches += 1
                if out.trade_gaps:
                    self._gap_count += len(out.trade_gaps)
                    if self._on_trade_gaps is not None:
                        self._on_trade_gaps(out.trade_gaps)
                if out.trades:
                    self._trade_count += len(out.trades)
                    await self._trades.publish(out.trades)
                if out.books:
                    self._book_count += len(out.books)
                    if self._books is not None:
                        await self._books.publish(out.books)
