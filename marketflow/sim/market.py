"""The simulator's deterministic market: one trade tape per (category, symbol), published as shared frames.

A tape is a `random.Random` seeded from the run's seed and a CRC of the tape's name (never `hash()`, which
is salted per process), so the same seed always yields the same ids, prices, sizes, sides and grouping into
frames. Only the timestamps are real wall-clock time. Prices and sizes are integers of ticks formatted with
fixed decimals, so the strings are exact.

A `TradeFeed` runs while a topic has subscribers: it cuts the tape into frames at the configured rate (or as
fast as the subscribers drain them when the rate is 0) and hands every subscriber the same frame objects,
whose wire bytes are encoded once.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

# A generated trade, kept as a plain tuple because the hot path builds hundreds of thousands per second:
# (id, price, size, side, T ms, seq, tick direction).
TradeRow = tuple[str, str, str, str, int, int, str]
ROW_ID: Final = 0
ROW_PRICE: Final = 1
ROW_SIZE: Final = 2
ROW_SIDE: Final = 3
ROW_T: Final = 4
ROW_SEQ: Final = 5
ROW_TICK: Final = 6

MAX_TRADES_PER_FRAME = 1024  # Bybit splits bigger bursts (PROTOCOLS §1.3)
BURST_FRAMES = 128  # frames cut per wake-up when the rate is 0
BURST_BACKLOG = 256  # rate 0: wait until every subscriber has at most this many frames queued
CATCH_UP_FRAMES = 4096  # paced: most frames cut in one wake-up before the schedule is reset

SPOT_ID_BASE = 2290000001211680903  # looks like a live spot id; far above 2**53 on purpose
SPOT_SEQ_BASE = 114263055846
DERIVATIVE_SEQ_BASE = 457514743450

FrameEncoder = Callable[[list[TradeRow], int], bytes]
"""Venue encoder: (trades, envelope ts in ms) → the complete wire bytes of one WebSocket frame."""


@attrs.frozen
class SimTrade:
    """One trade as the simulator generated it; `symbol` is native, `ts_ms` is the trade's `T`."""

    category: str
    symbol: str
    id: str
    price: str
    size: str
    side: str
    ts_ms: int
    seq: int


@attrs.frozen
class Instrument:
    """How one tape prices and sizes its trades; a price is `ticks * 10**-tick_decimals`."""

    symbol: str
    start_ticks: int
    tick_decimals: int
    price_decimals: int
    size_decimals: int
    mean_size_steps: float
    numeric_ids: bool  # spot: increasing numeric strings; derivatives: UUIDs


def stable_crc(text: str) -> int:
    """A process-independent 32-bit hash (CRC-32) of `text`."""
    return zlib.crc32(text.encode())


def instrument_for(category: str, symbol: str) -> Instrument:
    """The instrument spec of `symbol` on `category` (`spot`, or a derivative category)."""
    spot = category == "spot"
    if symbol.startswith("BTC"):
        if spot:  # "80413.3", "0.004904"
            return Instrument(symbol, 650_000, 1, 1, 6, 5_000.0, True)
        return Instrument(symbol, 650_000, 1, 2, 3, 20.0, False)  # "65114.20", "0.020"
    if symbol.startswith("ETH"):
        if spot:
            return Instrument(symbol, 300_000, 2, 2, 5, 20_000.0, True)
        return Instrument(symbol, 300_000, 2, 2, 2, 30.0, False)
    # Anything else: a price between 1 and 500 from the name, 4 decimals.
    start = (1 + stable_crc(symbol) % 500) * 10_000
    return Instrument(symbol, start, 4, 4, 1, 100.0, spot)


_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class TradeTape:
    """The deterministic trade sequence of one (category, symbol).

    Three random streams (walk and sizes, trade ids, grouping into frames) keep the tape the same however
    it is cut: taking 128 frames at once yields exactly what taking them one by one would.
    """

    def __init__(self, seed: int, category: str, instrument: Instrument) -> None:
        self.category = category
        self.instrument = instrument
        self.symbol = symbol = instrument.symbol
        crc = stable_crc(category + ":" + symbol)
        # str seeds go through SHA-512, so they are stable across processes (unlike hash()).
        name = "%d:%s:%s:" % (seed, category, symbol)  # noqa: UP031
        self._rng = random.Random(name + "walk")
        self._id_rng = random.Random(name + "ids")
        self._group_rng = random.Random(name + "frames")
        self._ticks = instrument.start_ticks
        self._last_move = 1
        self._next_id = SPOT_ID_BASE + (crc % 1000) * 1_000_000_000_000
        self._seq = (SPOT_SEQ_BASE if instrument.numeric_ids else DERIVATIVE_SEQ_BASE) + crc % 1_000_000
        self._last_t = 0
        self._last_ts = 0
        self._prices: dict[int, str] = {}  # ticks → formatted price; a random walk revisits prices a lot
        self._sizes: dict[int, str] = {}

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

    def _price(self, ticks: int) -> str:
        inst = self.instrument
        units = ticks * 10 ** (inst.price_decimals - inst.tick_decimals)
        whole, frac = divmod(units, 10**inst.price_decimals)
        text = self._prices[ticks] = "%d.%0*d" % (whole, inst.price_decimals, frac)  # noqa: UP031
        return text

    def _size(self, steps: int) -> str:
        decimals = self.instrument.size_decimals
        whole, frac = divmod(steps, 10**decimals)
        text = self._sizes[steps] = "%d.%0*d" % (whole, decimals, frac)  # noqa: UP031
        return text

    def take(self, count: int, ts_ms: int) -> list[TradeRow]:
        """The next `count` trades, matched one ms before `ts_ms` (never going back in time)."""
        random_ = self._rng.random
        log = math.log
        start = self.instrument.start_ticks
        band = start * 0.2
        mean_size = self.instrument.mean_size_steps
        prices = self._prices
        sizes = self._sizes
        t = max(ts_ms - 1, self._last_t)
        self._last_t = t
        ticks = self._ticks
        last_move = self._last_move
        next_id = self._next_id
        seq = self._seq
        numeric = self.instrument.numeric_ids
        if not numeric:
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
            price = prices.get(ticks) or self._price(ticks)
            steps = 1 + int(-mean_size * log(1.0 - random_()))
            size = sizes.get(steps) or self._size(steps)
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
            append((trade_id, price, size, side, t, seq, tick))
        self._ticks = ticks
        self._last_move = last_move
        self._next_id = next_id
        self._seq = seq
        return rows


class TapeFrame:
    """One published frame: shared by every subscriber of its topic, encoded once."""

    __slots__ = ("category", "delivered", "gen", "symbol", "trades", "wire")

    def __init__(self, gen: int, category: str, symbol: str, trades: list[TradeRow], wire: bytes) -> None:
        self.gen = gen  # generation order across all tapes
        self.category = category
        self.symbol = symbol
        self.trades = trades
        self.wire = wire
        self.delivered = False


class FrameSink(Protocol):
    """A subscriber of a feed (a client connection)."""

    def push_frames(self, frames: list[TapeFrame]) -> None: ...

    def backlog(self) -> int: ...

    async def wait_backlog_at_most(self, frames: int) -> None:
        """Return once at most `frames` are queued, or the sink is closed."""


class Market:
    """All tapes of one simulator run plus the counters that order their frames."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._tapes: dict[tuple[str, str], TradeTape] = {}
        self.frames_generated = 0
        self.trades_generated = 0

    def tape(self, category: str, symbol: str) -> TradeTape:
        key = (category, symbol)
        tape = self._tapes.get(key)
        if tape is None:
            tape = self._tapes[key] = TradeTape(self.seed, category, instrument_for(category, symbol))
        return tape

    def cut_frames(
        self, tape: TradeTape, encode: FrameEncoder, count: int, trades_per_frame: tuple[int, int]
    ) -> list[TapeFrame]:
        """Cut `count` frames off `tape` now and encode them."""
        low, high = trades_per_frame
        now_ms = time.time_ns() // 1_000_000
        ts = tape.stamp(now_ms)
        gen = self.frames_generated
        category = tape.category
        symbol = tape.symbol
        frames: list[TapeFrame] = []
        sizes = tape.frame_sizes(count, low, high)
        rows = tape.take(sum(sizes), ts)
        at = 0
        for size in sizes:
            chunk = rows[at : at + size]
            at += size
            frames.append(TapeFrame(gen, category, symbol, chunk, encode(chunk, ts)))
            gen += 1
        self.frames_generated = gen
        self.trades_generated += len(rows)
        return frames


class TradeFeed:
    """Publishes one topic's tape to its subscribers while there are any.

    `rate` is frames per second; 0 means as fast as the slowest subscriber drains them (benchmarks). The
    feed stops for good after `max_frames` frames; subscribers stay connected.
    """

    def __init__(
        self,
        market: Market,
        tape: TradeTape,
        encode: FrameEncoder,
        *,
        rate: float,
        trades_per_frame: tuple[int, int],
        max_frames: int | None,
    ) -> None:
        self.market = market
        self.tape = tape
        self.encode = encode
        self.rate = rate
        low, high = trades_per_frame
        self.trades_per_frame = (max(1, low), min(high, MAX_TRADES_PER_FRAME))
        self.max_frames = max_frames
        self.subscribers: set[FrameSink] = set()
        self.frames_published = 0
        self.running = False

    @property
    def exhausted(self) -> bool:
        return self.max_frames is not None and self.frames_published >= self.max_frames

    def _cut(self, count: int) -> list[TapeFrame]:
        if self.max_frames is not None:
            count = min(count, self.max_frames - self.frames_published)
        self.frames_published += count
        return self.market.cut_frames(self.tape, self.encode, count, self.trades_per_frame)

    def _publish(self, frames: list[TapeFrame]) -> None:
        for sink in self.subscribers:
            sink.push_frames(frames)

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
        while self.subscribers and not self.exhausted:
            await trio.sleep_until(next_at)
            if not self.subscribers:
                return
            now = trio.current_time()
            due = math.floor((now - next_at) / interval) + 1
            if due > CATCH_UP_FRAMES:
                due, next_at = CATCH_UP_FRAMES, now + interval  # hopelessly behind: do not burst forever
            else:
                next_at += due * interval
            self._publish(self._cut(due))

    async def _run_burst(self) -> None:
        while self.subscribers and not self.exhausted:
            self._publish(self._cut(BURST_FRAMES))
            for sink in list(self.subscribers):
                if sink.backlog() > BURST_BACKLOG:
                    await sink.wait_backlog_at_most(BURST_BACKLOG)
            await trio.lowlevel.checkpoint()


def to_sim_trades(frames: list[TapeFrame], category: str | None = None) -> list[SimTrade]:
    """Ground-truth records for `frames`, in generation order."""
    out: list[SimTrade] = []
    for frame in sorted(frames, key=lambda f: f.gen):
        if category is not None and frame.category != category:
            continue
        out.extend(
            SimTrade(
                frame.category,
                frame.symbol,
                row[ROW_ID],
                row[ROW_PRICE],
                row[ROW_SIZE],
                row[ROW_SIDE],
                row[ROW_T],
                row[ROW_SEQ],
            )
            for row in frame.trades
        )
    return out


__all__ = [
    "MAX_TRADES_PER_FRAME",
    "FrameEncoder",
    "FrameSink",
    "Instrument",
    "Market",
    "SimTrade",
    "TapeFrame",
    "TradeFeed",
    "TradeRow",
    "TradeTape",
    "instrument_for",
    "stable_crc",
    "to_sim_trades",
]
