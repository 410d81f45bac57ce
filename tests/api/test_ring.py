"""The trade ring against a brute-force reference: what it holds, from when it is complete, its lag
histogram — for batches that mix markets and exchanges, overflow the ring, and arrive out of time order."""

from __future__ import annotations

import bisect
from collections import deque
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketflow.api.ring import _BOUNDS_US, TradeRing
from marketflow.model import Trade

MARKETS = [("bybit", "BTC-USDT"), ("bybit", "ETH-USDT"), ("binance", "BTC-USDT")]
START = 1_700_000_000_000_000


class Reference:
    """One trade at a time, the obvious way."""

    def __init__(self, capacity: int, started_at: int) -> None:
        self.capacity = capacity
        self.started_at = started_at
        self.rings: dict[tuple[str, str], deque[Trade]] = {}
        self.complete_from: dict[tuple[str, str], int] = {}
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, int] = {}

    def add(self, trades: list[Trade]) -> None:
        for t in trades:
            key = (t.exchange, t.symbol)
            ring = self.rings.setdefault(key, deque())
            self.complete_from.setdefault(key, self.started_at)
            if len(ring) == self.capacity:
                evicted = ring.popleft()
                self.complete_from[key] = max(self.complete_from[key], evicted.ts + 1)
            ring.append(t)
            delay = max(0, t.recv_ts - t.ts)
            counts = self.counts.setdefault(t.exchange, [0] * (len(_BOUNDS_US) + 1))
            counts[bisect.bisect_left(_BOUNDS_US, delay)] += 1
            self.sums[t.exchange] = self.sums.get(t.exchange, 0) + delay


trades_st = st.lists(
    st.tuples(
        st.integers(0, len(MARKETS) - 1),
        st.integers(-2_000_000, 2_000_000),  # ts jitter around arrival order
        st.integers(-500_000, 20_000_000),  # receipt lag (negative: the exchange clock is ahead)
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 8), batches=st.lists(trades_st, max_size=6))
def test_ring_matches_a_one_trade_at_a_time_reference(
    capacity: int, batches: list[list[tuple[int, int, int]]]
) -> None:
    ring = TradeRing(None, capacity)
    ring._started_at = START
    reference = Reference(capacity, START)
    n = 0
    for spec in batches:
        batch = []
        for market, jitter, lag in spec:
            n += 1
            exchange, symbol = MARKETS[market]
            ts = START + n * 1000 + jitter
            batch.append(Trade(exchange, symbol, str(n), Decimal(1), Decimal(1), "buy", ts, ts + lag))
        ring.add(batch)
        reference.add(batch)
    for key, held in reference.rings.items():
        assert list(ring._rings[key]) == list(held)
        assert ring.complete_from(*key) == reference.complete_from[key]
    stats = ring.statistics()
    assert stats.trades == sum(len(b) for b in batches)
    for exchange, counts in reference.counts.items():
        assert stats.lag[exchange].counts == tuple(counts)
        assert stats.lag[exchange].sum_s == reference.sums[exchange] / 1_000_000
