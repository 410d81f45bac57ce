"""Record sinks through database outages longer than their memory: the overflow spills to disk (fsynced,
checksummed), is written first and in order when the database answers, survives a restart, and only a full
disk too makes the queue drop (the oldest, counted) — without crashing.

The outages are real: PostgreSQL stopped, or SQLite locked by another connection (`BEGIN EXCLUSIVE`, as a
long transaction of another process would; the store's writes then fail after its 5 s busy timeout).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from marketflow.analytics.candles import Candle
from marketflow.api.metrics import make_registry, render
from marketflow.api.queries import QueryContext
from marketflow.daemon import Daemon
from marketflow.model import DerivativesTick, GapRecord, Liquidation
from marketflow.pipeline.market_data import Quote
from marketflow.runtime.sink import RecordQueue, RecordSink
from marketflow.sim import SimConfig, SimServer
from marketflow.storage import open_store
from marketflow.storage.spool import SUFFIX, RecordSpool, RecordSpools, read_records
from marketflow.storage.writer import StorageError
from tests.conftest import sim_config
from tests.pg import shared_cluster
from tests.storage.full_disk import run_full_disk, tmpfs_mountable
from tests.storage.helpers import wait_real
from tests.storage.test_market_rows import liquidation, sample

CAPACITY = 20  # memory: up to 10 records, then the oldest spill; 20 at most
CHUNK = 10


async def wait_within(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll on the (virtual) clock, bounded in real time: under autojump a virtual deadline would expire
    at once whenever every task waits for a thread (the spill's fsyncs, the database)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await trio.sleep(0.02)


def liquidation_key(r: Liquidation) -> tuple[str, str, str]:
    return (r.exchange, r.symbol, r.id)


def sample_key(r: DerivativesTick) -> tuple[str, str, int]:
    return (r.exchange, r.symbol, r.ts)


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*" + SUFFIX))


@contextlib.asynccontextmanager
async def database_down(url: str) -> AsyncIterator[None]:
    """PostgreSQL stopped, or the SQLite file locked by another writer, while the block runs."""
    if url.startswith("sqlite:///"):
        lock = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    cluster = shared_cluster()
    await trio.to_thread.run_sync(cluster.stop)
    try:
        yield
    finally:
        await trio.to_thread.run_sync(cluster.start)


async def submit_through_failed_rounds(
    queues: Sequence[RecordQueue[Any]], chunks: list[list[list[Any]]]
) -> None:
    """Submit chunk after chunk, each after every sink failed another round: an outage of many rounds."""
    for chunk in chunks:
        errors = [q.errors for q in queues]
        for queue, records in zip(queues, chunk, strict=True):
            queue.submit(records)
        await wait_within(lambda e=errors: all(q.errors > n for q, n in zip(queues, e, strict=True)))  # type: ignore[misc]


def test_a_record_spool_round_trips_every_kind_exactly(tmp_path: Path) -> None:
    """Decimals keep their digits, None stays None, times stay exact integers."""

    async def main() -> None:
        price = Decimal("17216.00")
        candle_values = map(Decimal, ("1.10", "2", "0.9", "1.5", "3.000", "1", "2.000"))
        kinds: list[tuple[type[Any], list[Any]]] = [
            (DerivativesTick, [sample(1), sample(2, oi=None)]),
            (Liquidation, [liquidation(1), liquidation(2)]),
            (Quote, [Quote("bybit", "BTC-USDT", 1, price, Decimal("0.0100"), None, None)]),
            (
                GapRecord,
                [GapRecord("okx", "X", "trades", 5, None, "why"), GapRecord("a", "b", "book", 1, 9, "x", 3)],
            ),
            (Candle, [Candle("bybit", "BTC-USDT", "1m", 60, *candle_values, 7, Decimal("1.2500"))]),
        ]
        for record_type, batch in kinds:
            spool = RecordSpool(tmp_path / record_type.__name__, record_type)
            await spool.open()
            await spool.append(batch)
            await spool.close()
            again = RecordSpool(tmp_path / record_type.__name__, record_type)  # a restart reads it back
            await again.open()
            assert again.held == len(batch)
            replayed = await again.peek()
            assert replayed == batch and [repr(r) for r in replayed] == [repr(r) for r in batch]
            assert read_records(tmp_path / record_type.__name__, record_type) == [batch]

    trio.run(main)


async def test_a_long_postgresql_outage_stores_every_liquidation_and_sample_once(
    tmp_path: Path, pg_url: str, autojump_clock: trio.abc.Clock
) -> None:
    store: Any = open_store(pg_url)
    await store.open()
    spills = RecordSpools(tmp_path / "spool" / "records")
    liquidations: RecordQueue[Liquidation] = RecordQueue(
        "liquidations", capacity=CAPACITY, key=liquidation_key, spill=spills("liquidations", Liquidation)
    )
    samples: RecordQueue[DerivativesTick] = RecordQueue(
        "derivatives", capacity=CAPACITY, key=sample_key, spill=spills("derivatives", DerivativesTick)
    )
    total = 12 * CHUNK
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(RecordSink("liquidations", store.write_liquidations, queue=liquidations).run)
            await nursery.start(RecordSink("derivatives", store.write_derivatives, queue=samples).run)
            async with database_down(pg_url):
                chunks = [
                    [
                        [liquidation(i) for i in range(s, s + CHUNK)],
                        [sample(i) for i in range(s, s + CHUNK)],
                    ]
                    for s in range(0, total, CHUNK)
                ]
                await submit_through_failed_rounds([liquidations, samples], chunks)
                # A later version of a sample long spilled: it must win over the spilled one.
                samples.submit([sample(0, oi="2.000")])
                on_disk = {
                    "liquidations": read_records(spills.directory / "liquidations", Liquidation),
                    "derivatives": read_records(spills.directory / "derivatives", DerivativesTick),
                }
                for queue, held in ((liquidations, total), (samples, total + 1)):
                    stats = queue.statistics()
                    assert stats.dropped == 0 and stats.written == 0 and stats.errors >= 12
                    assert stats.queued <= CAPACITY and stats.spooled >= total - CAPACITY
                    assert stats.spooled + stats.queued == held
                    assert stats.spooled == sum(map(len, on_disk[queue.name]))
                assert on_disk["derivatives"][0][0] == sample(0)  # the old version waits on disk
            await wait_within(lambda: (liquidations.written, samples.written) == (total, total + 1))
            assert not any(q.queued or q.spooled for q in (liquidations, samples))
            nursery.cancel_scope.cancel()
        stored = await store.query_liquidations("binance", "BTC-USDT-PERP", None, None, None)
        assert stored == [liquidation(i) for i in reversed(range(total))]  # each once, exact
        rows = await store.query_derivatives("bybit", "BTC-USDT-PERP", None, None, None)
        assert rows == [sample(i) for i in reversed(range(1, total))] + [sample(0, oi="2.000")]
        assert str(rows[-1].open_interest) == "2.000"
    finally:
        await store.close()
    for queue in (liquidations, samples):
        stats = queue.statistics()
        assert (stats.dropped, stats.spooled, stats.disk_full, stats.spill_errors) == (0, 0, False, 0)
        assert stats.written >= total and stats.spooled_total >= total - CAPACITY
    assert spill_files(spills.directory) == []


async def test_a_restart_mid_outage_writes_what_the_last_run_spilled_first(
    store_url: str, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The first run stops during the outage: memory goes to the spill. The next run, started while the
    database is still down, writes it all once the database answers; newer versions still win."""
    directory = tmp_path / "spool" / "records"
    store: Any = open_store(store_url)
    await store.open()

    def queue() -> RecordQueue[DerivativesTick]:
        spill = RecordSpools(directory)("derivatives", DerivativesTick)  # a new process: a new spool
        return RecordQueue("derivatives", capacity=CAPACITY, key=sample_key, spill=spill)

    try:
        async with contextlib.AsyncExitStack() as outage:
            await outage.enter_async_context(database_down(store_url))
            first = queue()
            async with trio.open_nursery() as nursery:
                sink = RecordSink("derivatives", store.write_derivatives, queue=first)
                await nursery.start(sink.run)
                chunks = [[[sample(i) for i in range(s, s + CHUNK)]] for s in (0, CHUNK)]
                await submit_through_failed_rounds([first], chunks)
                first.submit([sample(i, oi="1.000") for i in range(2 * CHUNK, 3 * CHUNK)])
                sink.request_stop()  # a daemon stop: the database still does not answer
            stats = first.statistics()
            assert (stats.queued, stats.spooled, stats.written, stats.dropped) == (0, 3 * CHUNK, 0, 0)
            assert spill_files(directory)

            second = queue()  # the restarted daemon, still in the outage
            async with trio.open_nursery() as nursery:
                await nursery.start(RecordSink("derivatives", store.write_derivatives, queue=second).run)
                assert second.spooled == 3 * CHUNK  # found at the start, nothing submitted yet
                second.submit([sample(5, oi="9.000")])  # newer than its spilled version
                await wait_within(lambda: second.errors > 0)
                await outage.aclose()  # the database answers again
                await wait_within(lambda: second.written == 3 * CHUNK + 1)
                assert not second.spooled and not second.queued
                nursery.cancel_scope.cancel()
        rows = await store.query_derivatives("bybit", "BTC-USDT-PERP", None, None, None)
    finally:
        await store.close()
    expected = {sample(i).ts: sample(i) for i in range(2 * CHUNK)}
    expected |= {sample(i).ts: sample(i, oi="1.000") for i in range(2 * CHUNK, 3 * CHUNK)}
    expected[sample(5).ts] = sample(5, oi="9.000")
    assert rows == sorted(expected.values(), key=lambda r: r.ts, reverse=True)
    assert spill_files(directory) == []


async def disk_full_while_the_database_is_down(
    spool_dir: Path, work: Path, make_room: Callable[[], None]
) -> None:
    """The spill's disk fills during the outage: the queue drops its oldest past its capacity, counted, and
    keeps going; with room and the database back, everything not dropped is stored, once."""
    store: Any = open_store(f"sqlite:///{work}/t.db")  # opened once there is room (a file size limit)
    down = True

    async def write(batch: list[Liquidation]) -> None:  # the real store behind an off switch
        if down:
            raise StorageError("injected: connection refused")
        await store.write_liquidations(batch)

    queue: RecordQueue[Liquidation] = RecordQueue(
        "liquidations", capacity=CAPACITY, key=liquidation_key, spill=RecordSpool(spool_dir, Liquidation)
    )
    submitted = 0

    async def submit_chunk() -> None:
        nonlocal submitted
        errors = queue.errors
        queue.submit([liquidation(i) for i in range(submitted, submitted + CHUNK)])
        submitted += CHUNK
        await wait_real(lambda: queue.errors > errors)

    with trio.fail_after(60):  # real time (no virtual clock here)
        async with trio.open_nursery() as nursery:
            sink = RecordSink("liquidations", write, queue=queue, flush_interval_s=0.01)
            await nursery.start(sink.run)
            while not queue.disk_full:
                assert submitted < 2000, "the disk never filled"
                await submit_chunk()
            for _ in range(5):
                await submit_chunk()
            stats = queue.statistics()
            assert stats.disk_full and queue.spill_failing and stats.spill_errors >= 5
            assert stats.spill_error is not None and "cannot write to the spool" in stats.spill_error
            assert stats.dropped > 0 and stats.queued <= CAPACITY  # bounded, oldest dropped
            on_disk = read_records(spool_dir, Liquidation)
            assert stats.spooled == sum(map(len, on_disk)) > 0
            assert stats.spooled + stats.queued + stats.dropped == submitted
            make_room()
            await wait_real(lambda: not queue.disk_full)  # the next round spills again
            await store.open()
            down = False
            await wait_real(lambda: not queue.spooled and not queue.queued)
            sink.request_stop()
    stats = queue.statistics()
    stored = await store.query_liquidations("binance", "BTC-USDT-PERP", None, None, None)
    await store.close()
    ids = [r.id for r in stored]
    assert len(ids) == len(set(ids)) == submitted - stats.dropped == stats.written
    assert {r.id for r in on_disk[0]} <= set(ids)  # the oldest spilled are among them
    assert spill_files(spool_dir) == []


KINDS = [
    pytest.param(
        "tmpfs", marks=pytest.mark.skipif(not tmpfs_mountable(), reason="mounting a tmpfs needs root")
    ),
    "rlimit",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_spill_disk_drops_the_oldest_counted_and_keeps_running(kind: str, tmp_path: Path) -> None:
    run_full_disk(kind, disk_full_while_the_database_is_down, tmp_path, 2 * 4096)


async def test_a_hung_write_lets_the_overflow_spill_and_its_batch_goes_first(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A write that hangs for a minute and fails (a connection timing out): what arrives meanwhile spills
    instead of overflowing memory; the failed batch is older than the spill and is written before it; a
    newer version of one of its records, submitted meanwhile, still wins."""
    store: Any = open_store(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    calls: list[list[DerivativesTick]] = []
    hung: list[float] = []

    async def write(batch: list[DerivativesTick]) -> None:  # the real store, its first call timing out
        calls.append(batch)
        if len(calls) == 1:
            hung.append(trio.current_time())
            await trio.sleep(600)
            hung.append(trio.current_time())
            raise StorageError("injected: timed out after 600 s")
        await store.write_derivatives(batch)

    queue: RecordQueue[DerivativesTick] = RecordQueue(
        "derivatives",
        capacity=CAPACITY,
        key=sample_key,
        spill=RecordSpool(tmp_path / "spill", DerivativesTick),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(RecordSink("derivatives", write, queue=queue, flush_interval_s=1.0).run)
        queue.submit([sample(i) for i in range(CHUNK)])
        await wait_within(lambda: len(calls) == 1)
        for s in range(CHUNK, 6 * CHUNK, CHUNK):  # 50 records while the write hangs: memory holds 20
            queue.submit([sample(i) for i in range(s, s + CHUNK)])
            await wait_within(lambda: queue.queued <= CAPACITY // 2)  # spilled (an fsync: real time)
        queue.submit([sample(3, oi="7.000")])  # newer than the version in the hung batch
        stats = queue.statistics()
        assert stats.dropped == 0 and stats.spooled >= 4 * CHUNK and stats.errors == 0
        assert len(calls) == 1
        await wait_within(lambda: queue.errors == 1)
        assert hung[1] - hung[0] == pytest.approx(600, abs=1e-9)
        await wait_within(lambda: queue.written == 6 * CHUNK + 1)
        nursery.cancel_scope.cancel()
    rows = await store.query_derivatives("bybit", "BTC-USDT-PERP", None, None, None)
    await store.close()
    assert calls[1] == calls[0] == [sample(i) for i in range(CHUNK)]  # the failed batch first, again
    assert [r.ts for r in calls[2]] == [sample(i).ts for i in range(CHUNK, 2 * CHUNK)]  # then the spill
    newest = {r.ts: r for r in (sample(i) for i in range(6 * CHUNK))} | {sample(3).ts: sample(3, oi="7.000")}
    assert rows == sorted(newest.values(), key=lambda r: r.ts, reverse=True)
    assert queue.statistics().dropped == 0 and spill_files(tmp_path / "spill") == []


async def test_a_daemon_gives_each_kind_its_spill_under_state_dir_and_exposes_the_numbers(
    tmp_path: Path,
) -> None:
    config = sim_config(tmp_path, SimServer(SimConfig(seed=1)), markets=())
    config = attrs.evolve(config, storage=attrs.evolve(config.storage, record_buffer_max=CAPACITY))
    daemon = Daemon(config)
    queue = daemon.market.liquidations
    queue.submit([liquidation(i) for i in range(3 * CHUNK)])  # past the bound: the oldest are dropped
    assert metric(daemon, "marketflow_sink_queued", "liquidations") == CAPACITY
    assert metric(daemon, "marketflow_sink_dropped_total", "liquidations") == CHUNK
    await queue.spill_all()  # what a stop does
    on_disk = read_records(tmp_path / "spool" / "records" / "liquidations", Liquidation)
    assert on_disk == [[liquidation(i) for i in range(CHUNK, 3 * CHUNK)]]
    assert metric(daemon, "marketflow_sink_spooled", "liquidations") == CAPACITY
    assert metric(daemon, "marketflow_sink_spooled_total", "liquidations") == CAPACITY
    assert metric(daemon, "marketflow_sink_disk_full", "liquidations") == 0
    assert {s.name for s in map(RecordQueue.statistics, daemon.record_queues())} >= {
        "gaps", "candles", "derivatives", "liquidations"
    }  # fmt: skip
    assert not any(p.startswith("spill") for p in daemon.health().problems)


def metric(daemon: Daemon, name: str, sink: str) -> float:
    text = render(make_registry(QueryContext(daemon))).decode()
    for family in text_string_to_metric_families(text):
        for sample_ in family.samples:
            if sample_.name == name and sample_.labels.get("sink") == sink:
                return float(sample_.value)
    raise AssertionError(f"{name}{{sink={sink!r}}} not exposed")
