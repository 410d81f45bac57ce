"""The trade ring: the last `capacity` trades of every market in memory, for `/collectors/trades`.

A trade-bus subscriber with `DROP_OLDEST` overflow, so a slow reader never holds up the feeds; what the
bus drops is counted, and the ring then no longer claims to be complete before the drop (`complete_from`),
so the query layer asks storage for that part instead. It also observes the exchange → receipt lag of
every trade it takes (`recv_ts - ts`) into a fixed-bucket histogram that `/metrics` exposes.
"""

from __future__ import annotations

import bisect
import functools
from collections import Counter, deque
from collections.abc import Sequence
from itertools import islice

import attrs
import trio

from marketflow.model import Trade, now_us
from marketflow.runtime.bus import Subscription, receive_batches

__all__ = ["LAG_BUCKETS_S", "LagHistogram", "RingFeeder", "RingStatistics", "TradeRing"]

LAG_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the exchange → receipt lag histogram; +Inf is implied."""

_BOUNDS_US = tuple(int(b * 1_000_000) for b in LAG_BUCKETS_S)
_bucket = functools.partial(bisect.bisect_left, _BOUNDS_US)
"""The histogram bucket of a lag in µs."""
# Exchange clocks run a little ahead of ours: a trade stamped just after the ring started may have been
# received just before it. The ring claims completeness only from this much after its start.
CLOCK_MARGIN_US = 1_000_000


@attrs.frozen
class LagHistogram:
    """Per-bucket counts (not cumulative), the last one being +Inf; `sum_s` in seconds."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum_s: float


@attrs.frozen
class RingStatistics:
    name: str
    state: str
    capacity: int
    markets: int
    held: int
    trades: int
    batches: int
    lag: dict[str, LagHistogram]
    """Exchange → receipt lag per exchange."""


class _Lag:
    __slots__ = ("counts", "sum_us")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_US) + 1)
        self.sum_us = 0


class TradeRing:
    """Keeps the newest `capacity` trades per (exchange, symbol); an actor on a trade-bus subscription."""

    def __init__(
        self, subscription: Subscription[Trade] | None, capacity: int, *, name: str = "ring"
    ) -> None:
        if capacity < 1:
            raise ValueError(f"trade ring capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._subscription = subscription
        self._rings: dict[tuple[str, str], deque[Trade]] = {}
        # From when each market's ring holds every trade the bus delivered (µs).
        self._complete_from: dict[tuple[str, str], int] = {}
        self._started_at: int | None = None
        self._seen_drops = 0
        self._trades = 0
        self._batches = 0
        self._lag: dict[str, _Lag] = {}
        self._state = "idle"
        self._fed = False

    # -- the actor ------------------------------------------------------------------------------------------

    def feeder(self) -> RingFeeder:
        """A new actor taking batches from the ring's subscription into it."""
        if self._subscription is None:
            raise RuntimeError(f"trade ring {self.name!r} has no subscription to run on")
        return RingFeeder(self._subscription, self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take batches from the subscription until the bus closes (one `feeder()`)."""
        await self.feeder().run(task_status=task_status)

    def statistics(self) -> RingStatistics:
        return RingStatistics(
            name=self.name,
            state=self._state,
            capacity=self.capacity,
            markets=len(self._rings),
            held=sum(len(r) for r in self._rings.values()),
            trades=self._trades,
            batches=self._batches,
            lag={
                exchange: LagHistogram(
                    LAG_BUCKETS_S, tuple(lag.counts), sum(lag.counts), lag.sum_us / 1_000_000
                )
                for exchange, lag in self._lag.items()
            },
        )

    # -- feeding --------------------------------------------------------------------------------------------

    def add(self, trades: Sequence[Trade]) -> None:
        """Add a batch (arrival order) and observe each trade's exchange → receipt lag."""
        if self._started_at is None:
            self._started_at = now_us() + CLOCK_MARGIN_US
        count = len(trades)
        start = 0
        while start < count:
            first = trades[start]
            exchange, symbol = first.exchange, first.symbol
            end = start + 1
            # A run of one market's trades (a busy market's batch is mostly one run) is added at once.
            while end < count:
                trade = trades[end]
                if trade.symbol != symbol or trade.exchange != exchange:
                    break
                end += 1
            self._add_run(exchange, symbol, trades[start:end] if start or end < count else trades)
            start = end
        self._trades += count
        self._batches += 1

    def _add_run(self, exchange: str, symbol: str, run: Sequence[Trade]) -> None:
        key = (exchange, symbol)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = deque(maxlen=self.capacity)
            assert self._started_at is not None
            self._complete_from[key] = self._started_at
        leaving = len(ring) + len(run) - self.capacity
        if leaving > 0:
            # The oldest trades leave: the ring is complete only after the newest of them from now on.
            held = min(leaving, len(ring))
            newest = max(t.ts for t in islice(ring, held)) if held else -1
            if leaving > held:
                newest = max(newest, max(t.ts for t in islice(run, leaving - held)))
            if newest >= self._complete_from[key]:
                self._complete_from[key] = newest + 1
        ring.extend(run)
        lag = self._lag.get(exchange)
        if lag is None:
            lag = self._lag[exchange] = _Lag()
        delays = [t.recv_ts - t.ts for t in run]
        counts = lag.counts
        # A negative delay (an exchange clock ahead of ours) counts as 0: bucket 0, nothing to the sum.
        for bucket, n in Counter(map(_bucket, delays)).items():
            counts[bucket] += n
        lag.sum_us += sum(delays) if min(delays) >= 0 else sum(d for d in delays if d > 0)

    def mark_incomplete(self, at: int | None = None) -> None:
        """Trades were lost before reaching the ring (bus overflow): trust it only from `at` (now) on."""
        at = now_us() if at is None else at
        for key in self._complete_from:
            self._complete_from[key] = max(self._complete_from[key], at)
        self._started_at = max(self._started_at or at, at)

    # -- reading --------------------------------------------------------------------------------------------

    def complete_from(self, exchange: str, symbol: str) -> int | None:
        """Exchange time (µs) from which the ring holds every trade of the market it was sent (None:
        it has none; every trade is then in storage or nowhere)."""
        if (exchange, symbol) not in self._rings:
            return self._started_at
        return self._complete_from.get((exchange, symbol))

    def recent(
        self,
        exchange: str,
        symbol: str,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Trade]:
        """Trades with `since <= ts < until`, newest first (by ts, then id, as storage orders them)."""
        ring = self._rings.get((exchange, symbol))
        if not ring:
            return []
        chosen = [t for t in ring if (since is None or t.ts >= since) and (until is None or t.ts < until)]
        chosen.sort(key=lambda t: (t.ts, t.id), reverse=True)
        return chosen if limit is None else chosen[:limit]

    def markets(self) -> list[tuple[str, str]]:
        return list(self._rings)


class RingFeeder:
    """Takes batches from a trade-bus subscription into a `TradeRing`; an actor, a fresh one per start.

    A restarted feeder marks the ring incomplete: the batch its predecessor had in hand may be lost to it.
    """

    def __init__(self, subscription: Subscription[Trade], ring: TradeRing) -> None:
        self.name = ring.name
        self._subscription = subscription
        self._ring = ring

    def statistics(self) -> RingStatistics:
        return self._ring.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take batches from the subscription until the bus closes."""
        subscription = self._subscription
        ring = self._ring
        if ring._fed:
            ring.mark_incomplete()
        ring._fed = True
        ring._state = "running"
        if ring._started_at is None:
            ring._started_at = now_us() + CLOCK_MARGIN_US
        try:
            with subscription.receiver() as receiver:
                task_status.started()
                while True:
                    try:
                        batches = await receive_batches(receiver)
                    except trio.EndOfChannel:
                        return
                    dropped = subscription.statistics().dropped_items
                    if dropped != ring._seen_drops:
                        ring._seen_drops = dropped
                        ring.mark_incomplete()
                    for batch in batches:
                        ring.add(batch)
        finally:
            ring._state = "stopped"
