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
from marketflow.model import BookUpdate, MarketData, RawFrames, Trade
from marketflow.runtime.bus import Bus, Subscription, receive_batches


@attrs.frozen
class DecoderStatistics:
    frames: int
    trades: int
    book_updates: int
    tickers: int
    derivatives: int
    liquidations: int
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
    market_data: int
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
        market_data: Bus[MarketData] | None = None,
        channels: dict[str, frozenset[str]] | None = None,
        name: str = "normalizer",
    ) -> None:
        """`channels` (feed -> the channels its config asks for, shared with the daemon like `decoders`):
        ticker/derivatives/liquidation records of a channel the feed did not ask for are dropped (one
        venue topic can serve two channels: Bybit linear `tickers`)."""
        self.name = name
        self._market_data = market_data
        self._channels = channels if channels is not None else {}
        self._market_count = 0
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
                c.tickers,
                c.derivatives,
                c.liquidations,
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
            self._market_count,
            self._unknown_feed_frames,
            feeds,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        receiver = self._raw.receiver()
        decoders = self._decoders
        channels = self._channels
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
                        wanted = channels.get(raw.feed)
                        if wanted is None:
                            decoder.decode(raw.frames, raw.recv_ts, out)
                            continue
                        marks = (len(out.tickers), len(out.derivatives), len(out.liquidations))
                        decoder.decode(raw.frames, raw.recv_ts, out)
                        if "ticker" not in wanted:
                            del out.tickers[marks[0] :]
                        if "derivatives" not in wanted:
                            del out.derivatives[marks[1] :]
                        if "liquidations" not in wanted:
                            del out.liquidations[marks[2] :]
                self._batches += 1
                # The frames are taken from the raw bus and the decoders have moved past them: a cancel
                # (the supervisor failing this actor, a reload) must not drop the decoded batch between
                # here and its subscribers, or its trades are lost with no gap to show for it.
                # A daemon cancelled past its shutdown deadline closes the buses, which ends a wait here.
                with trio.CancelScope(shield=True):
                    try:
                        await self._hand_off(out)
                    except trio.ClosedResourceError:
                        return

    async def _hand_off(self, out: Decoded) -> None:
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
        if out.tickers or out.derivatives or out.liquidations:
            data: list[MarketData] = [*out.tickers, *out.derivatives, *out.liquidations]
            self._market_count += len(data)
            if self._market_data is not None:
                await self._market_data.publish(data)
