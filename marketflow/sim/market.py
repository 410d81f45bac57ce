"""The simulator's deterministic market: one trade tape per (exchange, category, symbol), published as frames.

A tape is a `random.Random` seeded from the run's seed and the tape's name (str seeds go through SHA-512,
never `hash()`, which is salted per process), so the same seed always yields the same ids, prices, sizes,
sides and grouping into frames. Only the timestamps are real wall-clock time. Prices and sizes are integers
of ticks formatted with fixed decimals, so the strings are exact.

A `TradeFeed` runs while a tape has subscribers (or for good once started, with `keep_running`): it cuts
the tape into frames at the configured rate (or as fast as the subscribers drain them when the rate is 0)
and hands every subscriber of a channel the same frame objects, whose wire bytes are encoded once per
channel. Every generated trade also goes into the tape's bounded, packed history (`marketflow.sim.history`),
which the REST endpoints serve.

How a tape prices and sizes its trades (`Instrument`, `instrument_for`, `Formats`, `stable_crc`) lives in
`marketflow.sim.instruments`; those names are re-exported here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Final, Protocol

import attrs
import trio

from marketflow.sim.history import TradeHistory, TradeRow
from marketflow.sim.instruments import (
    FORMAT_CACHE_LIMIT,
    IDS_BINANCE,
    IDS_NUMERIC,
    IDS_UUID,
    Formats,
    Instrument,
    instrument_for,
    stable_crc,
)
from marketflow.sim.walk import LOCAL_BAND, AssetWalk, asset_of, basis_ppm

# The fields of a `TradeRow`. Bybit: `seq` is the cross sequence and `last` repeats it. Binance: `id` is the
# aggregate id, `seq`/`last` its first/last trade id (`f`/`l`).
ROW_ID: Final = 0
ROW_PRICE: Final = 1
ROW_SIZE: Final = 2
ROW_SIDE: Final = 3
ROW_T: Final = 4
ROW_SEQ: Final = 5
ROW_TICK: Final = 6
ROW_LAST: Final = 7

MAX_TRADES_PER_FRAME = 1024  # Bybit splits bigger bursts (PROTOCOLS §1.3)
BURST_FRAMES = 128  # frames cut per wake-up when the rate is 0
BURST_BACKLOG = 256  # rate 0: wait until every subscriber has at most this many frames queued
CATCH_UP_FRAMES = 4096  # paced: most frames cut in one wake-up before the schedule is reset
# Trades kept per tape for REST: Bybit recent-trade serves up to 1000; at 50 trades/s this is a minute of
# Binance aggTrades for `fromId`. About 0.25 MB a tape, packed.
DEFAULT_TRADE_HISTORY = 3_000

SPOT_ID_BASE = 2290000001211680903  # looks like a live spot id; far above 2**53 on purpose
SPOT_SEQ_BASE = 114263055846
DERIVATIVE_SEQ_BASE = 457514743450
BINANCE_AGG_BASE = {"spot": 3412663610, "usdm": 3141966230}  # live `a` values
BINANCE_TRADE_BASE = {"spot": 4504797980, "usdm": 7297376181}  # live `f` values

FrameEncoder = Callable[[list[TradeRow], int], bytes]
"""Channel encoder: (trades, event ts in ms) → complete wire bytes (one or more WebSocket frames)."""


@attrs.frozen
class SimTrade:
    """One trade as the simulator generated it; `symbol` is native, `ts_ms` is the trade's `T`.

    `exchange` is `bybit` (category `spot` / `linear` / `inverse`) or `binance` (category `spot` / `usdm`).
    For Binance a SimTrade is one aggTrade: `id` is the aggregate id `a`, `seq`/`last_seq` are `f`/`l`.
    For Bybit `seq` is the cross sequence and `last_seq` equals it.
    """

    category: str
    symbol: str
    id: str
    price: str
    size: str
    side: str
    ts_ms: int
    seq: int
    exchange: str = "bybit"
    last_seq: int = attrs.field(default=attrs.Factory(lambda self: int(self.seq), takes_self=True))


_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class TradeTape:
    """The deterministic trade sequence of one (exchange, category, symbol).

    Three random streams (walk and sizes, trade ids, grouping into frames) keep the tape the same however
    it is cut: taking 128 frames at once yields exactly what taking them one by one would.
    """

    def __init__(
        self, seed: int, category: str, instrument: Instrument, *, exchange: str = "bybit", history: int = 0
    ) -> None:
        self.exchange = exchange
        self.category = category
        self.instrument = instrument
        self.formats = Formats(instrument)
        self.symbol = symbol = instrument.symbol
        label = category if exchange == "bybit" else exchange + "-" + category
        crc = stable_crc(label + ":" + symbol)
        name = "%d:%s:%s:" % (seed, label, symbol)  # noqa: UP031
        self._rng = random.Random(name + "walk")
        self._id_rng = random.Random(name + "ids")
        self._group_rng = random.Random(name + "frames")
        self._ticks = instrument.start_ticks
        self._last_move = 1
        if instrument.ids == IDS_BINANCE:
            self._next_id = BINANCE_AGG_BASE.get(category, 1_000_000) + (crc % 1000) * 1_000_000
            self._seq = BINANCE_TRADE_BASE.get(category, 2_000_000) + (crc % 1000) * 1_000_000
        else:
            self._next_id = SPOT_ID_BASE + (crc % 1000) * 1_000_000_000_000
            base = SPOT_SEQ_BASE if instrument.ids == IDS_NUMERIC else DERIVATIVE_SEQ_BASE
            self._seq = base + crc % 1_000_000
        self._last_t = 0
        self._last_ts = 0
        self.walk: AssetWalk | None = None
        """The asset's shared path (set by `Market.tape`); None: the tape walks alone, as before."""
        self.pace = 1.0
        """Trades per walk step (the feed's mean trades per frame)."""
        self.basis_ppm = basis_ppm(exchange, category, instrument.symbol)
        self._taken = 0
        self._step = -1
        self._offset = 0
        self.history = TradeHistory(history)
        """The most recent generated trades (at least the last `history`), oldest first."""

    def frame_sizes(self, count: int, low: int, high: int) -> list[int]:
        """How many trades each of the next `count` frames carries."""
        random_ = self._group_rng.random
        span = high - low + 1
        return [low + int(random_() * span) for _ in range(count)]

    def stamp(self, now_ms: int) -> int:
        """Envelope `ts` for frames cut now: wall clock, never decreasing."""
        ts = max(now_ms, self._last_ts)
        self._last_ts = ts
        return ts

    def record(self, rows: list[TradeRow]) -> None:
        """Keep `rows` in the bounded history."""
        self.history.extend(rows)

    def take(self, count: int, ts_ms: int) -> list[TradeRow]:
        """The next `count` trades, matched one ms before `ts_ms` (never going back in time)."""
        random_ = self._rng.random
        log = math.log
        start = self.instrument.start_ticks
        walk = self.walk
        band = start * (0.2 if walk is None else LOCAL_BAND)
        pace = self.pace
        taken = self._taken
        step = self._step
        offset = self._offset
        mean_size = self.instrument.mean_size_steps
        formats = self.formats
        prices = formats.prices
        sizes = formats.sizes
        t = max(ts_ms - 1, self._last_t)
        self._last_t = t
        ticks = self._ticks
        last_move = self._last_move
        next_id = self._next_id
        seq = self._seq
        ids = self.instrument.ids
        numeric = ids == IDS_NUMERIC
        binance = ids == IDS_BINANCE
        if ids == IDS_UUID:
            # One draw for all the UUIDs; consumed from the low end, so batch size does not matter.
            hexes = self._id_rng.getrandbits(128 * count).to_bytes(16 * count, "little").hex()
            variant = _UUID_VARIANT
        rows: list[TradeRow] = []
        append = rows.append
        for n in range(count):
            # Random walk on the tick grid, pulled back towards the start so prices stay plausible.
            u = random_()
            if u < 0.5:
                move = 0
                side = "Buy" if random_() < 0.5 else "Sell"
                tick = "ZeroPlusTick" if last_move > 0 else "ZeroMinusTick"
            else:
                move = 1 + int(random_() * 3)
                if u >= 0.75 - (ticks - start) / band or ticks <= move:
                    move = -move if ticks > move else move
                ticks += move
                if move > 0:
                    side, tick, last_move = "Buy", "PlusTick", 1
                else:
                    side, tick, last_move = "Sell", "MinusTick", -1
            if walk is not None:  # the shared path (and the venue's basis), once per walk step
                at = int(taken / pace)
                taken += 1
                if at != step:
                    step = at
                    offset = round(start * (walk.ppm(at) + self.basis_ppm) / 1_000_000)
                shown = ticks + offset
                price = prices.get(shown) or formats.price(shown)
            else:
                price = prices.get(ticks) or formats.price(ticks)
            steps = 1 + int(-mean_size * log(1.0 - random_()))
            size = sizes.get(steps) or formats.size(steps)
            if binance:
                # One taker order: a contiguous aggregate id over 1+ contiguous fills, mostly one.
                next_id += 1
                fills = min(steps, 1 + int(random_() * random_() * 4))
                append((str(next_id), price, size, side, t, seq + 1, tick, seq + fills))
                seq += fills
                continue
            if numeric:
                next_id += 1 + int(random_() * 16)
                trade_id = str(next_id)
            else:
                o = 32 * n
                h = hexes[o : o + 32]
                # Shaped like a version-5 UUID, as live linear ids are.
                trade_id = (
                    h[:8] + "-" + h[8:12] + "-5" + h[13:16] + "-" + variant[h[16]] + h[17:20] + "-" + h[20:]
                )
            seq += 1 + int(random_() * 8)
            append((trade_id, price, size, side, t, seq, tick, seq))
        self._ticks = ticks
        self._last_move = last_move
        self._taken, self._step, self._offset = taken, step, offset
        self._next_id = next_id
        self._seq = seq
        return rows


class TapeFrame:
    """One published frame: shared by every subscriber of a channel, encoded once per channel.

    A frame cut off a tape is the *origin*; other channels of the same tape (e.g. Binance's combined
    wrapper, or `@trade` next to `@aggTrade`) get views with their own wire bytes and `origin` set, so the
    ground truth counts each trade once however many channels carried it.
    """

    __slots__ = (
        "category",
        "delivered",
        "exchange",
        "gen",
        "origin",
        "symbol",
        "topic",
        "trades",
        "ts",
        "wire",
    )

    def __init__(
        self,
        gen: int,
        category: str,
        symbol: str,
        trades: list[TradeRow],
        wire: bytes,
        *,
        exchange: str = "bybit",
        ts: int = 0,
        topic: str = "",
        origin: TapeFrame | None = None,
    ) -> None:
        self.gen = gen  # generation order across all tapes
        self.category = category
        self.symbol = symbol
        self.trades = trades
        self.wire = wire
        self.exchange = exchange
        self.ts = ts
        self.topic = topic  # the subscription channel this frame was encoded for
        self.origin = origin
        self.delivered = False

    def view(self, wire: bytes, topic: str) -> TapeFrame:
        return TapeFrame(
            self.gen,
            self.category,
            self.symbol,
            self.trades,
            wire,
            exchange=self.exchange,
            ts=self.ts,
            topic=topic,
            origin=self,
        )


def channel_key(name: str, combined: bool) -> str:
    """A connection's name for one subscription: the topic, marked when frames are Binance-wrapped."""
    return name + "#combined" if combined else name


class WireFrame:
    """A pre-framed message that is not a trade frame (order-book data), tagged with its channel."""

    __slots__ = ("topic", "wire")

    def __init__(self, wire: bytes, topic: str) -> None:
        self.wire = wire
        self.topic = topic


class FrameSink(Protocol):
    """A subscriber of a feed (a client connection)."""

    def push_frames(self, frames: list[TapeFrame] | list[WireFrame]) -> None: ...

    def backlog(self) -> int: ...

    async def wait_backlog_at_most(self, frames: int) -> None:
        """Return once at most `frames` are queued, or the sink is closed."""


class Market:
    """All tapes of one simulator run plus the counters that order their frames."""

    def __init__(self, seed: int, *, history: int = DEFAULT_TRADE_HISTORY) -> None:
        self.seed = seed
        self.history = history
        self._tapes: dict[tuple[str, str, str], TradeTape] = {}
        self._walks: dict[str, AssetWalk] = {}
        self.frames_generated = 0
        self.trades_generated = 0

    def tape(self, category: str, symbol: str, exchange: str = "bybit") -> TradeTape:
        key = (exchange, category, symbol)
        tape = self._tapes.get(key)
        if tape is None:
            instrument = instrument_for(category, symbol, exchange)
            tape = TradeTape(self.seed, category, instrument, exchange=exchange, history=self.history)
            asset = asset_of(symbol)
            walk = self._walks.get(asset)
            if walk is None:
                walk = self._walks[asset] = AssetWalk(self.seed, asset)
            tape.walk = walk
            self._tapes[key] = tape
        return tape

    def find_tape(self, exchange: str, category: str, symbol: str) -> TradeTape | None:
        return self._tapes.get((exchange, category, symbol))

    def cut_frames(self, tape: TradeTape, count: int, trades_per_frame: tuple[int, int]) -> list[TapeFrame]:
        """Cut `count` frames off `tape` now (not encoded yet) and keep their trades in its history."""
        low, high = trades_per_frame
        tape.pace = (low + high) / 2  # a walk step per frame: venues at one frame rate walk in step
        now_ms = time.time_ns() // 1_000_000
        ts = tape.stamp(now_ms)
        gen = self.frames_generated
        category = tape.category
        symbol = tape.symbol
        exchange = tape.exchange
        frames: list[TapeFrame] = []
        sizes = tape.frame_sizes(count, low, high)
        rows = tape.take(sum(sizes), ts)
        tape.record(rows)
        at = 0
        for size in sizes:
            chunk = rows[at : at + size]
            at += size
            frames.append(TapeFrame(gen, category, symbol, chunk, b"", exchange=exchange, ts=ts))
            gen += 1
        self.frames_generated = gen
        self.trades_generated += len(rows)
        return frames


class FeedChannel:
    """The subscribers of a tape that share one encoding (a topic, or a stream in one wrapper style)."""

    __slots__ = ("encode", "sinks", "topic")

    def __init__(self, topic: str, encode: FrameEncoder) -> None:
        self.topic = topic
        self.encode = encode
        self.sinks: set[FrameSink] = set()


class TradeFeed:
    """Publishes one tape to its subscribers while there are any.

    `rate` is frames per second; 0 means as fast as the slowest subscriber drains them (benchmarks). The
    feed stops for good after `max_frames` frames; subscribers stay connected. With `keep_running` a paced
    feed, once started, keeps cutting frames with nobody subscribed (they only reach the history).
    """

    def __init__(
        self,
        market: Market,
        tape: TradeTape,
        *,
        rate: float,
        trades_per_frame: tuple[int, int],
        max_frames: int | None,
        keep_running: bool = False,
    ) -> None:
        self.market = market
        self.tape = tape
        self.rate = rate
        low, high = trades_per_frame
        self.trades_per_frame = (max(1, low), min(high, MAX_TRADES_PER_FRAME))
        self.max_frames = max_frames
        self.keep_running = keep_running
        self.channels: dict[str, FeedChannel] = {}
        self.frames_published = 0
        self.running = False

    def subscribe(self, sink: FrameSink, topic: str, encoder: Callable[[], FrameEncoder]) -> None:
        channel = self.channels.get(topic)
        if channel is None:
            channel = self.channels[topic] = FeedChannel(topic, encoder())
        channel.sinks.add(sink)

    def unsubscribe(self, sink: FrameSink, topic: str) -> None:
        channel = self.channels.get(topic)
        if channel is not None:
            channel.sinks.discard(sink)

    def sinks(self) -> Iterator[FrameSink]:
        for channel in self.channels.values():
            yield from channel.sinks

    @property
    def subscribed(self) -> bool:
        return any(channel.sinks for channel in self.channels.values())

    @property
    def exhausted(self) -> bool:
        return self.max_frames is not None and self.frames_published >= self.max_frames

    def _cut(self, count: int) -> list[TapeFrame]:
        if self.max_frames is not None:
            count = min(count, self.max_frames - self.frames_published)
        self.frames_published += count
        return self.market.cut_frames(self.tape, count, self.trades_per_frame)

    def _publish(self, frames: list[TapeFrame]) -> None:
        first = True
        for channel in self.channels.values():
            if not channel.sinks:
                continue
            encode = channel.encode
            topic = channel.topic
            if first:  # the common case of one channel: the origin frames themselves go out
                first = False
                for frame in frames:
                    frame.wire = encode(frame.trades, frame.ts)
                    frame.topic = topic
                out = frames
            else:
                out = [frame.view(encode(frame.trades, frame.ts), topic) for frame in frames]
            for sink in channel.sinks:
                sink.push_frames(out)

    async def run(self) -> None:
        """Publish until nobody is subscribed or the feed is exhausted; start again with a new `run`."""
        self.running = True
        try:
            if self.rate > 0:
                await self._run_paced()
            else:
                await self._run_burst()
        finally:
            self.running = False

    async def _run_paced(self) -> None:
        interval = 1.0 / self.rate
        next_at = trio.current_time() + interval
        while (self.subscribed or self.keep_running) and not self.exhausted:
            await trio.sleep_until(next_at)
            if not (self.subscribed or self.keep_running):
                return
            now = trio.current_time()
            due = math.floor((now - next_at) / interval) + 1
            if due > CATCH_UP_FRAMES:
                due, next_at = CATCH_UP_FRAMES, now + interval  # hopelessly behind: do not burst forever
            else:
                next_at += due * interval
            self._publish(self._cut(due))

    async def _run_burst(self) -> None:
        # Never without subscribers: "as fast as possible" for nobody would only burn the CPU.
        while self.subscribed and not self.exhausted:
            self._publish(self._cut(BURST_FRAMES))
            for sink in list(self.sinks()):
                if sink.backlog() > BURST_BACKLOG:
                    await sink.wait_backlog_at_most(BURST_BACKLOG)
            await trio.lowlevel.checkpoint()


def row_to_sim_trade(exchange: str, category: str, symbol: str, row: TradeRow) -> SimTrade:
    return SimTrade(
        category,
        symbol,
        row[ROW_ID],
        row[ROW_PRICE],
        row[ROW_SIZE],
        row[ROW_SIDE],
        row[ROW_T],
        row[ROW_SEQ],
        exchange,
        row[ROW_LAST],
    )


def to_sim_trades(
    frames: list[TapeFrame], category: str | None = None, exchange: str | None = None
) -> list[SimTrade]:
    """Ground-truth records for `frames`, in generation order."""
    out: list[SimTrade] = []
    for frame in sorted(frames, key=lambda f: f.gen):
        if category is not None and frame.category != category:
            continue
        if exchange is not None and frame.exchange != exchange:
            continue
        out.extend(
            row_to_sim_trade(frame.exchange, frame.category, frame.symbol, row) for row in frame.trades
        )
    return out


__all__ = [
    "DEFAULT_TRADE_HISTORY",
    "FORMAT_CACHE_LIMIT",
    "MAX_TRADES_PER_FRAME",
    "FeedChannel",
    "FrameEncoder",
    "FrameSink",
    "Formats",
    "Instrument",
    "Market",
    "SimTrade",
    "TapeFrame",
    "TradeFeed",
    "TradeHistory",
    "TradeRow",
    "TradeTape",
    "WireFrame",
    "channel_key",
    "instrument_for",
    "row_to_sim_trade",
    "stable_crc",
    "to_sim_trades",
]
