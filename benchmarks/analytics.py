"""Analytics benchmark: CPU per trade of the AnalyticsEngine against just draining the same batches.

    python -m benchmarks.analytics [--trades N] [--rate R] [--repeat K] [--intervals 1m,5m,1h]

Trades are a BTC-like random walk on a 0.1 tick around 65000 with 8-decimal amounts, R trades per second
of exchange time (so bars close as they would live), built as `Trade` structs before any timing. Each run
publishes them in batches of 100 on a `Bus`, to one BLOCK subscriber that is either

- the baseline: drains with `receive_batches` and does nothing else, or
- the engine: `AnalyticsEngine.run` on the subscription (bin 10, candles persisted to a list),

and measures this process's CPU time (`time.process_time`). Baseline and engine alternate, best of K.
`extra` = engine − baseline per trade: what analytics adds. It is compared with the pipeline's own cost
per trade (~4 µs measured end to end, STYLE.md) as the share analytics would add to it; target ≤ 25%.
Also timed: `ingest` called directly (no trio), a few queries over the live window, and the same ranges
computed from storage (`analytics/stored.py`) on each `--stored-url` (default: a temporary SQLite file;
add `postgresql://...` for the SQL path): wall time per query and µs per stored trade.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from decimal import Decimal

import trio

from marketflow.analytics import AnalyticsEngine, Candle, parse_interval
from marketflow.analytics.stored import stored_candles, stored_order_flow, stored_volume_profile
from marketflow.config import AnalyticsConfig
from marketflow.model import Trade
from marketflow.runtime.bus import Bus, Overflow, Subscription, receive_batches

BATCH = 100
PIPELINE_US_PER_TRADE = 4.0  # STYLE.md: whole pipeline, burst, ~4 µs CPU per trade
SYMBOL = "BTC-USDT"
T0 = 1_786_000_000_000_000


def make_trades(count: int, rate: float, seed: int = 7) -> list[Trade]:
    rng = random.Random(seed)
    tick = 650_000  # price in 0.1 units
    ts = T0
    step = int(1_000_000 / rate)
    out = []
    for index in range(count):
        tick += rng.choice((-1, 0, 0, 1)) * rng.choice((1, 1, 1, 2, 5))
        ts += rng.randint(0, 2 * step)
        amount = rng.choice((rng.randint(1, 99_999), rng.randint(1, 100_000_000)))
        out.append(
            Trade(
                exchange="bybit",
                symbol=SYMBOL,
                id=str(index),
                price=Decimal(f"{tick // 10}.{tick % 10}0"),
                amount=Decimal(amount).scaleb(-8),
                side="buy" if rng.random() < 0.5 else "sell",
                ts=ts,
                recv_ts=ts,
            )
        )
    return out


def batches_of(trades: list[Trade]) -> list[list[Trade]]:
    return [trades[low : low + BATCH] for low in range(0, len(trades), BATCH)]


async def drain(subscription: Subscription[Trade]) -> None:
    with subscription.receiver() as receiver:
        while True:
            try:
                batches = await receive_batches(receiver)
            except trio.EndOfChannel:
                return
            for batch in batches:
                len(batch)


def engine_for(
    subscription: Subscription[Trade] | None, intervals: tuple[str, ...], sink: list[Candle]
) -> AnalyticsEngine:
    config = AnalyticsConfig(candle_intervals=intervals, bin_size={SYMBOL: Decimal(10)})
    # The clock sits at the start of the data: bars close by trades, as in a burst, not by the clock.
    return AnalyticsEngine(subscription, config, persist=sink.extend, clock=lambda: T0)


async def one_run(batches: list[list[Trade]], consumer: Callable[[Subscription[Trade]], object]) -> float:
    bus: Bus[Trade] = Bus("trades")
    subscription = bus.subscribe("consumer", capacity=64, overflow=Overflow.BLOCK)
    started = time.process_time()
    async with trio.open_nursery() as nursery:
        runner = consumer(subscription)
        await nursery.start(runner)  # type: ignore[arg-type]
        for batch in batches:
            await bus.publish(batch)
        bus.close()
    return time.process_time() - started


def timed_runs(batches: list[list[Trade]], intervals: tuple[str, ...], repeat: int) -> tuple[float, float]:
    baseline: list[float] = []
    engine: list[float] = []
    for _ in range(repeat):
        baseline.append(trio.run(one_run, batches, _drain_actor))
        engine.append(trio.run(one_run, batches, lambda sub: engine_for(sub, intervals, []).run))
    return min(baseline), min(engine)


def _drain_actor(subscription: Subscription[Trade]) -> Callable[..., object]:
    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await drain(subscription)

    return run


def direct_ingest(
    batches: list[list[Trade]], intervals: tuple[str, ...], repeat: int
) -> tuple[float, AnalyticsEngine]:
    best = float("inf")
    engine = engine_for(None, intervals, [])
    for _ in range(repeat):
        engine = engine_for(None, intervals, [])
        started = time.process_time()
        for batch in batches:
            engine.ingest(batch)
        best = min(best, time.process_time() - started)
    return best, engine


def query_times(engine: AnalyticsEngine, intervals: tuple[str, ...]) -> list[tuple[str, float]]:
    out = []
    finest = min(intervals, key=parse_interval)
    coarsest = max(intervals, key=parse_interval)
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"candles {finest}, whole window", lambda: engine.candles("bybit", SYMBOL, finest)),
        (
            f"order_flow {finest} + footprint",
            lambda: engine.order_flow("bybit", SYMBOL, finest, footprint=True),
        ),
        (
            f"order_flow {coarsest} + footprint",
            lambda: engine.order_flow("bybit", SYMBOL, coarsest, footprint=True),
        ),
        ("volume_profile, whole window", lambda: engine.volume_profile("bybit", SYMBOL)),
    ]
    for name, call in cases:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        out.append((name, statistics.median(samples) * 1000))
    return out


def retained_bytes(trades: list[Trade], intervals: tuple[str, ...]) -> tuple[int, int]:
    """Bytes the engine's state holds after ingesting (trades themselves excluded) and closed bars held."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = engine_for(None, intervals, [])
    for batch in batches_of(trades):
        engine.ingest(batch)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    bars = sum(len(engine.candles("bybit", SYMBOL, interval)["candles"]) for interval in intervals)
    return after - before, bars


async def stored_times(url: str, trades: list[Trade], interval: str) -> list[tuple[str, float]]:
    """Write the trades into a fresh store at `url`, then time stored-range queries over all of them."""
    from marketflow.storage import open_store  # only this part needs storage

    store = open_store(url)
    await store.open()
    try:
        for batch in (trades[low : low + 50_000] for low in range(0, len(trades), 50_000)):
            await store.write_trades(batch)
        step = parse_interval(interval)
        since = T0 - T0 % step
        cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            (
                f"candles {interval} (first 10000)",
                lambda: stored_candles(store, None, "bybit", SYMBOL, step, since, None, 10_000),
            ),
            (
                f"order_flow {interval} + footprint",
                lambda: stored_order_flow(
                    store,
                    None,
                    "bybit",
                    SYMBOL,
                    step,
                    since,
                    None,
                    large_trade_notional=Decimal(100_000),
                    footprint_bin=Decimal(10),
                ),
            ),
            (
                "volume_profile, bin 1",
                lambda: stored_volume_profile(
                    store, None, "bybit", SYMBOL, since, None, bin=Decimal(1), value_area=Decimal("0.7")
                ),
            ),
        ]
        out = []
        for name, call in cases:
            samples = []
            for _ in range(3):
                started = time.perf_counter()
                await call()
                samples.append(time.perf_counter() - started)
            out.append((name, statistics.median(samples) * 1000))
        return out
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.analytics", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--trades", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=50.0, help="trades per second of exchange time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--intervals", default="1m,5m,1h")
    parser.add_argument(
        "--stored-url", action="append", default=None, help="a store to time stored ranges on (repeatable)"
    )
    args = parser.parse_args()
    intervals = tuple(args.intervals.split(","))
    trades = make_trades(args.trades, args.rate)
    batches = batches_of(trades)
    span_h = (trades[-1].ts - trades[0].ts) / 3.6e9
    print(f"{len(trades):,} trades over {span_h:.1f} h of exchange time, batches of {BATCH}, {intervals}")

    base_s, engine_s = timed_runs(batches, intervals, args.repeat)
    n = len(trades)
    base_us, engine_us = base_s / n * 1e6, engine_s / n * 1e6
    extra = engine_us - base_us
    _, one_s = timed_runs(batches, intervals[:1], args.repeat)
    one_extra = one_s / n * 1e6 - base_us
    direct_s, engine = direct_ingest(batches, intervals, args.repeat)
    print(f"\n{'what (CPU, best of ' + str(args.repeat) + ')':46} {'µs/trade':>10}")
    print(f"{'bus publish + drain (baseline)':46} {base_us:10.3f}")
    print(f"{'bus publish + AnalyticsEngine.run':46} {engine_us:10.3f}")
    print(f"{'extra for analytics, ' + str(len(intervals)) + ' intervals':46} {extra:10.3f}")
    print(f"{'extra for analytics, 1 interval':46} {one_extra:10.3f}")
    print(f"{'AnalyticsEngine.ingest alone (no trio)':46} {direct_s / n * 1e6:10.3f}")
    print(f"\nratio engine/baseline (same batches, same process): {engine_us / base_us:.2f}")
    share = extra / PIPELINE_US_PER_TRADE
    verdict = "within" if share <= 0.25 else "over"
    print(
        f"analytics adds {share:.0%} to a {PIPELINE_US_PER_TRADE:.0f} µs/trade pipeline "
        f"({verdict} the 25% target; {extra / 8.0:.0%} of an 8 µs one)"
    )
    print("\nqueries over the live window (median of 5):")
    for name, ms in query_times(engine, intervals):
        print(f"  {name:44} {ms:8.2f} ms")
    memory, bars = retained_bytes(trades[: min(n, 100_000)], intervals)
    per_bar = memory / max(bars, 1) / 1e3
    print(
        f"\nstate after {min(n, 100_000):,} trades: {memory / 1e6:.1f} MB, {bars} bars ({per_bar:.1f} kB/bar)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for url in args.stored_url or [f"sqlite:///{tmp}/stored.db"]:
            engine_name = url.split(":", 1)[0]
            print(f"\nstored ranges over all {n:,} trades, {engine_name} (median of 3):")
            for name, ms in trio.run(stored_times, url, trades, min(intervals, key=parse_interval)):
                print(f"  {name:44} {ms:8.1f} ms {ms * 1000 / n:8.2f} µs/trade")


if __name__ == "__main__":
    main()
