"""The simulator's deterministic order books: one per (exchange, market, symbol), with update ids.

A `SimBook` holds integer prices (ticks of its instrument) and sizes (steps) per side. Each `step()` is one
book update: a few levels added, changed or deleted near the touch, the touch moving up or down (pulled
back towards the start price), and the tail topped up or trimmed so each side keeps about `levels`
levels. The sequence of updates depends only on the seed and the book's name, never on timing or faults
that only affect delivery (skipped updates, stale snapshots, crossings). The book itself is never
crossed: a `cross_next` fault marks the next update, and each stream then sends one message carrying a
bid above the best ask and repairs it in its next message, so snapshots never show the crossing.

Update ids: every level change consumes one id (`first_id`..`last_id` of a step are contiguous across
steps), like Binance spot. With `id_gaps` (Binance USD-M) each step starts with a jump of dozens of ids and
changes advance by 1-3, so consecutive steps are not contiguous. Bybit books use the id as `seq`.

A `BookFeed` steps a book at a fixed rate while any of its streams has subscribers and hands every step
to the streams; the venue modules decide what a stream sends (Binance diffs, Bybit top-N deltas).
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from marketflow.sim.market import BURST_BACKLOG, CATCH_UP_FRAMES, FrameSink, Instrument, WireFrame, stable_crc

UNDO_STEPS = 64  # how many past updates a stale snapshot can go back
MIN_LEVELS = 5  # a side never gets thinner than this through deletes
BURST_STEPS = 32  # rate 0: updates per wake-up
IDLE_CHECK_S = 0.25
ID_BASES = {  # live-looking magnitudes
    ("binance", "spot"): 49_981_777_515,
    ("binance", "usdm"): 9_924_360_134_267,
    ("bybit", "spot"): 181_840_388_171,
}
BYBIT_DERIVATIVE_ID_BASE = 7_961_638_724

Levels = list[tuple[int, int]]
"""(price ticks, size steps), best first."""


class BookTick:
    """One book update: the net changes per side (size 0 = deleted) and its id range."""

    __slots__ = ("asks", "bids", "cross", "first_id", "last_id", "number", "prev_id", "restart", "skip")

    def __init__(
        self,
        number: int,
        bids: dict[int, int],
        asks: dict[int, int],
        prev_id: int,
        first_id: int,
        last_id: int,
        *,
        skip: bool,
        restart: bool,
        cross: bool = False,
    ) -> None:
        self.number = number  # 1 for the book's first update
        self.bids = bids
        self.asks = asks
        self.prev_id = prev_id  # the book's id before this update
        self.first_id = first_id
        self.last_id = last_id
        self.skip = skip  # fault: streams drop their next message
        self.restart = restart  # fault: Bybit streams restart at u = 1
        self.cross = cross  # fault: streams send a crossing bid in their next message, then repair it


def book_id_base(exchange: str, category: str, symbol: str) -> int:
    base = ID_BASES.get((exchange, category), BYBIT_DERIVATIVE_ID_BASE)
    return base + (stable_crc(exchange + category + symbol) % 1000) * 1_000_000


class SimBook:
    """A deterministic order book with an update-id counter (see the module docstring)."""

    def __init__(
        self,
        seed: int,
        exchange: str,
        category: str,
        instrument: Instrument,
        *,
        levels: int = 200,
        id_gaps: bool | None = None,
        skip_every: int | None = None,
    ) -> None:
        self.exchange = exchange
        self.category = category
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.levels = max(levels, MIN_LEVELS + 1)
        self.id_gaps = exchange == "binance" and category == "usdm" if id_gaps is None else id_gaps
        self.skip_every = skip_every
        self._rng = random.Random("%d:%s-%s:%s:book" % (seed, exchange, category, self.symbol))  # noqa: UP031
        self._mean_size = instrument.mean_size_steps * 3
        self._start = instrument.start_ticks
        self._band = max(instrument.start_ticks * 0.05, 50.0)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self._bid_keys: list[int] = []  # negated prices, ascending = best first
        self._ask_keys: list[int] = []
        self.last_id = book_id_base(exchange, category, self.symbol)
        self.updates = 0
        self._undo: deque[tuple[int, list[tuple[bool, int, int]]]] = deque(maxlen=UNDO_STEPS)
        self._ops: list[tuple[bool, int, int]] = []
        self._tick_bids: dict[int, int] = {}
        self._tick_asks: dict[int, int] = {}
        # Faults, consumed by the next step (or REST snapshot).
        self.skip_next = 0
        self.restart_next = False
        self.cross_next = False
        self.stale_next = 0
        self._build()

    # -- reading -------------------------------------------------------------------------------------

    def best_bid(self) -> int:
        return -self._bid_keys[0]

    def best_ask(self) -> int:
        return self._ask_keys[0]

    def crossed(self) -> bool:
        return bool(self._bid_keys and self._ask_keys) and self.best_bid() >= self.best_ask()

    def top(self, depth: int) -> tuple[Levels, Levels]:
        """The best `depth` levels per side: bids descending, asks ascending."""
        bids = self.bids
        asks = self.asks
        return (
            [(-k, bids[-k]) for k in self._bid_keys[:depth]],
            [(k, asks[k]) for k in self._ask_keys[:depth]],
        )

    def top_maps(self, depth: int) -> tuple[dict[int, int], dict[int, int]]:
        """`top` as price → size dicts."""
        bids = self.bids
        asks = self.asks
        return (
            {-k: bids[-k] for k in self._bid_keys[:depth]},
            {k: asks[k] for k in self._ask_keys[:depth]},
        )

    def state_back(self, steps: int, depth: int) -> tuple[Levels, Levels, int]:
        """The top `depth` levels and the last id as they were `steps` updates ago (as far as kept)."""
        bids = dict(self.bids)
        asks = dict(self.asks)
        last_id = self.last_id
        for prev_id, ops in list(self._undo)[::-1][:steps]:
            for is_bid, price, old in reversed(ops):
                side = bids if is_bid else asks
                if old:
                    side[price] = old
                else:
                    side.pop(price, None)
            last_id = prev_id
        bid_prices = sorted(bids, reverse=True)[:depth]
        ask_prices = sorted(asks)[:depth]
        return [(p, bids[p]) for p in bid_prices], [(p, asks[p]) for p in ask_prices], last_id

    # -- updating ------------------------------------------------------------------------------------

    def _size(self) -> int:
        return 1 + int(-self._mean_size * math.log(1.0 - self._rng.random()))

    def _build(self) -> None:
        rng = self._rng.random
        price = self._start
        for _ in range(self.levels):
            self._put(True, price, self._size())
            price -= 1 + int(rng() * 3)
            if price <= 0:
                break
        price = self._start + 1
        for _ in range(self.levels):
            self._put(False, price, self._size())
            price += 1 + int(rng() * 3)

    def _put(self, bid: bool, price: int, size: int) -> None:
        """Set a level without recording it (initial build)."""
        side = self.bids if bid else self.asks
        keys = self._bid_keys if bid else self._ask_keys
        if price not in side:
            bisect.insort(keys, -price if bid else price)
        side[price] = size

    def _set(self, bid: bool, price: int, size: int) -> None:
        """Change one level as part of the current update (size 0 deletes)."""
        side = self.bids if bid else self.asks
        old = side.get(price, 0)
        if old == size:
            return
        self._ops.append((bid, price, old))
        (self._tick_bids if bid else self._tick_asks)[price] = size
        keys = self._bid_keys if bid else self._ask_keys
        key = -price if bid else price
        if size:
            if not old:
                bisect.insort(keys, key)
            side[price] = size
        else:
            del side[price]
            del keys[bisect.bisect_left(keys, key)]

    def _touch_op(self, rng: Callable[[], float]) -> None:
        """Move the touch one way: take the best level on one side or improve the other."""
        bid_keys = self._bid_keys
        ask_keys = self._ask_keys
        best_bid = -bid_keys[0]
        best_ask = ask_keys[0]
        pull = max(-0.4, min(0.4, ((best_bid + best_ask) / 2 - self._start) / self._band))
        down = rng() < 0.5 + pull
        improve = rng() < 0.5 and best_ask - best_bid > 1
        if down:
            if improve:
                self._set(False, best_ask - 1, self._size())
            elif len(bid_keys) > MIN_LEVELS:
                self._set(True, best_bid, 0)
        elif improve:
            self._set(True, best_bid + 1, self._size())
        elif len(ask_keys) > MIN_LEVELS:
            self._set(False, best_ask, 0)

    def _level_op(self, rng: Callable[[], float]) -> None:
        """Change, add or delete one level near the touch."""
        bid = rng() < 0.5
        keys = self._bid_keys if bid else self._ask_keys
        if rng() < 0.7:
            distance = int(-math.log(1.0 - rng()) * 4)  # ticks from the own best, mostly small
            price = -keys[0] - distance if bid else keys[0] + distance
            if price > 0:
                self._set(bid, price, self._size())
        elif len(keys) > MIN_LEVELS:
            index = min(len(keys) - 1, int(-math.log(1.0 - rng()) * 4))
            self._set(bid, -keys[index] if bid else keys[index], 0)

    def _tail(self, rng: Callable[[], float]) -> None:
        """Keep each side near `levels` deep: top up or trim at most two levels at the far end."""
        target = self.levels
        slack = target // 10 + 5
        for bid in (True, False):
            keys = self._bid_keys if bid else self._ask_keys
            for _ in range(2):
                if len(keys) < target:
                    worst = -keys[-1] if bid else keys[-1]
                    gap = 1 + int(rng() * 3)
                    price = worst - gap if bid else worst + gap
                    if price <= 0:
                        break
                    self._set(bid, price, self._size())
                elif len(keys) > target + slack:
                    self._set(bid, -keys[-1] if bid else keys[-1], 0)
                else:
                    break

    def step(self) -> BookTick:
        """Apply the next update and return it."""
        rng = self._rng.random
        self._ops = []
        self._tick_bids = {}
        self._tick_asks = {}
        prev_id = self.last_id
        for _ in range(2 + int(rng() * 6)):
            if rng() < 0.3:
                self._touch_op(rng)
            else:
                self._level_op(rng)
        self._tail(rng)
        if not self._ops:  # every update changes something, so U <= u always holds
            best = self.best_bid()
            self._set(True, best, self.bids[best] + 1)
        changes = len(self._ops)
        if self.id_gaps:
            first_id = prev_id + 20 + int(rng() * 180)
            last_id = first_id + sum(1 + int(rng() * 3) for _ in range(changes - 1))
        else:
            first_id = prev_id + 1
            last_id = prev_id + changes
        self.last_id = last_id
        self.updates += 1
        self._undo.append((prev_id, self._ops))
        skip = False
        if self.skip_next:
            self.skip_next -= 1
            skip = True
        elif self.skip_every is not None and self.updates % self.skip_every == 0:
            skip = True
        restart, self.restart_next = self.restart_next, False
        cross, self.cross_next = self.cross_next, False
        return BookTick(
            self.updates,
            self._tick_bids,
            self._tick_asks,
            prev_id,
            first_id,
            last_id,
            skip=skip,
            restart=restart,
            cross=cross,
        )


class Crossing:
    """A stream's side of the `cross_book` fault: one message with a bid above the best ask, then a repair."""

    __slots__ = ("pending", "price")

    def __init__(self) -> None:
        self.pending = False
        self.price: int | None = None  # the crossing bid the subscribers hold now

    @property
    def outstanding(self) -> bool:
        return self.pending or self.price is not None

    def apply(self, true_bids: dict[int, int], best_ask: int, size: int, changes: dict[int, int]) -> None:
        """Add the crossing bid, or its repair, to the bid changes of the message about to go out."""
        if self.price is not None:
            changes[self.price] = true_bids.get(self.price, 0)
            self.price = None
        if self.pending:
            self.pending = False
            self.price = best_ask + 1
            changes[self.price] = size


class BookStream(Protocol):
    """A venue stream derived from one book (a Binance diff stream, a Bybit depth topic)."""

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        """Subscribe `sink`; return the frame it must get first (a Bybit snapshot), if any."""

    def remove_sink(self, sink: FrameSink) -> None: ...

    def sinks(self) -> Iterable[FrameSink]: ...

    def active(self) -> bool: ...

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        """Publish what this update means on the stream (called only while active)."""

    def on_idle(self, ts_ms: int) -> None:
        """Called about every `IDLE_CHECK_S` while active, updates or not (Bybit's 3 s level-1 re-send)."""

    def crossing_outstanding(self) -> bool:
        """A `cross_book` crossing is pending or not yet repaired on this stream."""


class BookFeed:
    """Steps one book `rate` times a second while any of its streams has subscribers.

    Rate 0 steps as fast as the slowest subscriber drains. With `keep_running` a paced feed, once started,
    keeps the book moving with nobody subscribed.
    """

    def __init__(self, book: SimBook, *, rate: float, keep_running: bool = False) -> None:
        self.book = book
        self.rate = rate
        self.keep_running = keep_running
        self.streams: dict[str, BookStream] = {}
        self.running = False
        self._last_ts = 0
        self._ticked = trio.Event()

    def stream(self, name: str, factory: Callable[[SimBook], BookStream]) -> BookStream:
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = factory(self.book)
        return stream

    @property
    def subscribed(self) -> bool:
        return any(stream.active() for stream in self.streams.values())

    def _stamp(self) -> int:
        ts = self._last_ts = max(time.time_ns() // 1_000_000, self._last_ts)
        return ts

    def tick(self) -> BookTick:
        """One update, published to every active stream."""
        tick = self.book.step()
        ts = self._stamp()
        for stream in self.streams.values():
            if stream.active():
                stream.on_tick(tick, ts)
        ticked, self._ticked = self._ticked, trio.Event()
        ticked.set()
        return tick

    async def wait_uncrossed(self, at_most: float = 2.0) -> None:
        """Until no stream holds a crossing (`cross_book`), so a snapshot taken now postdates the repair.

        REST snapshots wait for this: a client that resyncs after seeing the crossing lands after it,
        instead of re-applying the crossing message on top of the fresh snapshot.
        """
        with trio.move_on_after(at_most):
            while self.book.cross_next or any(
                stream.active() and stream.crossing_outstanding() for stream in self.streams.values()
            ):
                await self._ticked.wait()

    def idle(self) -> None:
        ts = self._stamp()
        for stream in self.streams.values():
            if stream.active():
                stream.on_idle(ts)

    async def run(self) -> None:
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
        next_idle = trio.current_time() + IDLE_CHECK_S
        while self.subscribed or self.keep_running:
            await trio.sleep_until(min(next_at, next_idle))
            now = trio.current_time()
            if now >= next_at:
                due = math.floor((now - next_at) / interval) + 1
                if due > CATCH_UP_FRAMES:
                    due, next_at = CATCH_UP_FRAMES, now + interval
                else:
                    next_at += due * interval
                for _ in range(due):
                    self.tick()
            if now >= next_idle:
                next_idle = now + IDLE_CHECK_S
                self.idle()

    async def _run_burst(self) -> None:
        while self.subscribed:
            for _ in range(BURST_STEPS):
                self.tick()
            for stream in list(self.streams.values()):
                for sink in list(stream.sinks()):
                    if sink.backlog() > BURST_BACKLOG:
                        await sink.wait_backlog_at_most(BURST_BACKLOG)
            await trio.lowlevel.checkpoint()


def depth_every(interval_ms: int, book_rate: float) -> int:
    """Book updates per event of a stream with a push interval (rate 0: taken as 10 updates/s)."""
    if book_rate <= 0:
        return max(1, interval_ms // 100)
    return max(1, round(interval_ms * book_rate / 1000))


__all__ = [
    "BookFeed",
    "BookStream",
    "BookTick",
    "Crossing",
    "Levels",
    "SimBook",
    "book_id_base",
    "depth_every",
]
