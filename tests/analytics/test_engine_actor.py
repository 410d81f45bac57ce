"""The engine as an actor on a real Bus: batches in, candles out, the clock closing quiet bars."""

from __future__ import annotations

from decimal import Decimal

import trio
import trio.testing

from marketflow.analytics import AnalyticsEngine, Candle, candle_json
from marketflow.config import AnalyticsConfig
from marketflow.model import Trade
from marketflow.runtime.bus import Bus, Overflow

from . import brute
from .strategies import EXCHANGE, SYMBOL, T0, trade

MIN = 60_000_000


def minute_trades(count: int, per_minute: int) -> list[Trade]:
    return [
        trade(
            str(100 + i % 7),
            f"0.{i % 9 + 1}",
            "buy" if i % 3 else "sell",
            T0 + i * (MIN // per_minute),
            id=str(i),
        )
        for i in range(count)
    ]


async def test_the_engine_consumes_batches_from_a_bus_and_persists_on_close() -> None:
    bus: Bus[Trade] = Bus("trades")
    subscription = bus.subscribe("analytics", capacity=4, overflow=Overflow.BLOCK)
    written: list[list[Candle]] = []
    engine = AnalyticsEngine(
        subscription, AnalyticsConfig(candle_intervals=("1m", "5m")), persist=written.append, clock=lambda: T0
    )
    trades = minute_trades(600, per_minute=60)  # ten minutes
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            for low in range(0, len(trades), 50):
                await bus.publish(trades[low : low + 50])
            bus.close()
    stats = engine.statistics()
    assert (stats.state, stats.trades, stats.late, stats.markets) == ("stopped", 600, 0, 1)
    assert stats.batches >= 1
    persisted = [candle for batch in written for candle in batch]
    assert [c.interval for c in persisted].count("1m") == 10
    assert [c.interval for c in persisted].count("5m") == 2
    for interval, interval_us in (("1m", MIN), ("5m", 5 * MIN)):
        rows = [candle_json(c) for c in persisted if c.interval == interval]
        assert rows == brute.candles(trades, interval_us)
        assert engine.candles(EXCHANGE, SYMBOL, interval) == {"candles": rows}
    assert stats.candles_emitted == 12


async def test_the_clock_closes_quiet_candles_while_running(autojump_clock: trio.testing.MockClock) -> None:
    bus: Bus[Trade] = Bus("trades")
    subscription = bus.subscribe("analytics", capacity=4)
    written: list[Candle] = []
    now = [T0]
    engine = AnalyticsEngine(
        subscription,
        AnalyticsConfig(candle_intervals=("1m",), bin_size={SYMBOL: Decimal(1)}),
        persist=written.extend,
        clock=lambda: now[0],
        close_grace_s=2,
        tick_s=1,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await bus.publish([trade("100", "1", "buy", T0 + 5)])
            await trio.sleep(4.5)  # ticks at t = 1, 2, 3, 4, 5: none of them coincides with a step here
            assert written == []  # still the open minute
            now[0] = T0 + MIN + 2_000_000  # the clock reaches the end of the minute plus the grace
            await trio.sleep(0.4)
            assert written == []  # the clock is read once a tick
            await trio.sleep(0.2)
            assert [(c.start, c.trades) for c in written] == [(T0, 1)]
            await bus.publish([trade("101", "1", "sell", T0 + 7)])  # late: corrects the closed candle
            await trio.testing.wait_all_tasks_blocked()
            assert [(c.start, c.trades) for c in written] == [(T0, 1), (T0, 2)]
            bus.close()
    assert engine.statistics().late == 1
