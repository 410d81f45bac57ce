"""The SQLite store and the writer actor: idempotent, exact, batched, flushed on time and on close."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from marketflow.config import DaemonConfig, StorageConfig, default_config
from marketflow.model import Trade, now_us
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Bus, Overflow
from marketflow.storage import make_writer, open_store
from marketflow.storage.sqlite import SqliteTradeStore, StorageError
from marketflow.storage.writer import StorageWriter
from tests.storage.helpers import SwitchableStore


def trade(i: int, *, symbol: str = "BTC-USDT", price: str = "65114.20", ts: int | None = None) -> Trade:
    return Trade(
        "bybit",
        symbol,
        str(2**60 + i),
        Decimal(price),
        Decimal("0.001000"),
        "buy" if i % 2 else "sell",
        ts if ts is not None else 1_700_000_000_000_000 + i * 1000,
        1_700_000_000_000_500 + i * 1000,
    )


def rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT exchange, symbol, id, price, amount, side, ts, recv_ts FROM trades ORDER BY ts"
        ).fetchall()
    finally:
        conn.close()


async def test_store_is_idempotent_and_exact(tmp_path: Path) -> None:
    store = SqliteTradeStore(f"sqlite:///{tmp_path}/a/b/t.db")
    await store.open()
    batch = [trade(i) for i in range(10)]
    assert await store.write_trades(batch) == 10
    assert await store.write_trades(batch[5:] + [trade(10)]) == 1  # duplicates are skipped, new one kept
    await store.close()
    got = rows(tmp_path / "a/b/t.db")
    assert len(got) == 11
    assert got[0] == (
        "bybit",
        "BTC-USDT",
        str(2**60),
        "65114.20",
        "0.001000",
        "sell",
        1_700_000_000_000_000,
        1_700_000_000_000_500,
    )
    newest = await store.query_trades(symbol="BTC-USDT", limit=2)
    assert [t.id for t in newest] == [str(2**60 + 10), str(2**60 + 9)]
    assert newest[0] == trade(10)


async def test_open_store_rejects_unknown_urls() -> None:
    with pytest.raises(StorageError, match="unsupported storage URL 'mysql://x'"):
        open_store("mysql://x")


async def test_store_open_failure_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SqliteTradeStore(f"sqlite:///{blocker}/sub/t.db")
    with pytest.raises(StorageError, match="cannot open SQLite database"):
        await store.open()


async def wait_real(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait in real time (the virtual clock stands still) for a worker thread's effect."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await trio.to_thread.run_sync(time.sleep, 0.005)
    raise AssertionError("condition not met in time")


async def test_writer_flushes_exactly_at_the_interval(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    db = tmp_path / "t.db"
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        SqliteTradeStore(f"sqlite:///{db}"),
        bus.subscribe("storage", 8, Overflow.BLOCK),
        batch_max=1000,
        flush_interval_s=0.25,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await bus.publish([trade(0), trade(1)])
        await wait_real(lambda: writer.statistics().buffered == 2)
        mock_clock.jump(0.249)
        await trio.testing.wait_all_tasks_blocked()
        assert writer.statistics().rows_written == 0 and rows(db) == []
        mock_clock.jump(0.001)  # exactly the flush interval after the first row arrived
        await wait_real(lambda: writer.statistics().rows_written == 2)
        assert len(rows(db)) == 2
        bus.close()
    assert writer.statistics().state == "stopped"


async def test_writer_commits_full_batches_and_everything_on_close(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        SqliteTradeStore(f"sqlite:///{db}"),
        bus.subscribe("storage", 8, Overflow.BLOCK),
        batch_max=100,
        flush_interval_s=3600,
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for start in range(0, 250, 50):
                await bus.publish([trade(i) for i in range(start, start + 50)])
            bus.close()
    stats = writer.statistics()
    assert stats.rows_written == 250 and stats.batches >= 3 and stats.buffered == 0
    assert len(rows(db)) == 250


class FlakyStore(SqliteTradeStore):
    """The real SQLite store with injected outages: the first `failures` writes raise."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    async def write_trades(self, batch: Sequence[Trade]) -> int:
        if self.failures:
            self.failures -= 1
            raise StorageError("injected: database is locked")
        return await super().write_trades(batch)


async def test_writer_retries_with_backoff_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    bus: Bus[Trade] = Bus("trades")
    store = FlakyStore(f"sqlite:///{db}", failures=3)
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 8, Overflow.BLOCK),
        batch_max=10,
        flush_interval_s=0.01,
        backoff=Backoff(0.01, 0.02),
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish([trade(i) for i in range(25)])
            bus.close()
    stats = writer.statistics()
    assert stats.errors == 3
    assert stats.last_error == "StorageError: injected: database is locked"
    assert stats.rows_written == 25 and len(rows(db)) == 25


async def test_statistics_carry_the_spec_storage_fields(tmp_path: Path) -> None:
    bus: Bus[Trade] = Bus("trades")
    writer = make_writer(
        attrs.evolve(
            default_config(env={}),
            daemon=DaemonConfig(state_dir=str(tmp_path)),
            storage=StorageConfig(url=f"sqlite:///{tmp_path}/t.db", flush_interval_s=0.01),
        ),
        open_store(f"sqlite:///{tmp_path}/t.db"),
        bus.subscribe("storage", 8, Overflow.BLOCK),
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish([trade(i) for i in range(5)])
            bus.close()
    stats = attrs.asdict(writer.statistics())
    # SPEC §6 /collectors/storage/stats: rows written, batches, lag, buffered, spooled, errors.
    assert {k: stats[k] for k in ("rows_written", "batches", "buffered", "spooled", "errors")} == {
        "rows_written": 5,
        "batches": 1,
        "buffered": 0,
        "spooled": 0,
        "errors": 0,
    }
    assert stats["lag_ms"] > 0 and stats["spool_path"] == f"{tmp_path}/spool/trades"


async def test_retention_prunes_in_small_batches_while_writes_go_on(store_url: str) -> None:
    day = 86_400_000_000
    now = now_us()
    seed = open_store(store_url)
    await seed.open()
    await seed.write_trades([trade(i, ts=now - 10 * day + i) for i in range(3000)])  # expired
    await seed.write_trades([trade(i, ts=now - 1 * day + i) for i in range(3000, 3100)])  # kept
    await seed.close()

    store = SwitchableStore(open_store(store_url))
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 8, Overflow.BLOCK),
        batch_max=20,
        flush_interval_s=0.005,
        retention_days=7,
        prune_batch=200,
        prune_pause_s=0.01,
        prune_interval_s=3600,
    )
    published = 0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            while writer.statistics().pruned < 3000:
                await bus.publish(
                    [trade(i, ts=now_us()) for i in range(10_000 + published, 10_020 + published)]
                )
                published += 20
                await trio.sleep(0.005)
            await wait_real(lambda: writer.statistics().rows_written == published)
            bus.close()
    stats = writer.statistics()
    assert stats.pruned == 3000 and stats.prune_batches == 15  # 200 at a time
    first, last = store.events.index("prune"), len(store.events) - 1 - store.events[::-1].index("prune")
    assert "write" in store.events[first:last]  # writes were committed between prune batches
    assert await count(store_url) == 100 + published


async def count(url: str) -> int:
    store = open_store(url)
    await store.open()
    try:
        return await store.count_trades()  # type: ignore[attr-defined, no-any-return]
    finally:
        await store.close()


async def test_daemon_writer_keeps_the_store_open_for_later_sinks(tmp_path: Path) -> None:
    """With `hold_store_open`, the bus ending does not close the store: actors that stop after the
    writer's bus (the candle sink, the gap ledger) still save through it, until `request_stop()`."""
    db = tmp_path / "t.db"
    bus: Bus[Trade] = Bus("trades")
    store = SqliteTradeStore(f"sqlite:///{db}")
    writer = StorageWriter(
        store, bus.subscribe("storage", 8, Overflow.BLOCK), batch_max=100, flush_interval_s=3600
    )
    writer.hold_store_open = True
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish([trade(1)])
            bus.close()
            while writer.statistics().state != "drained":  # noqa: ASYNC110 - polling a state, no event
                await trio.sleep(0.01)
            assert len(rows(db)) == 1  # drained and committed ...
            assert await store.write_trades([trade(2)]) == 1  # ... and the store still takes writes
            writer.request_stop()
    assert len(rows(db)) == 2
    assert writer.statistics().state == "stopped"


async def test_a_trickle_of_batches_wakes_the_reader_once_per_gathering_not_per_batch(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    db = tmp_path / "t.db"
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        SqliteTradeStore(f"sqlite:///{db}"),
        bus.subscribe("storage", 256, Overflow.BLOCK),
        batch_max=1000,
        flush_interval_s=0.25,
    )
    commits: list[tuple[float, int]] = []
    writer.on_commit = lambda chunk: commits.append((trio.current_time(), len(chunk)))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        for i in range(100):  # a batch every 10 ms for a second
            await trio.sleep_until(start + i * 0.01)
            await bus.publish([trade(i)])
        bus.close()
    stats = writer.statistics()
    assert stats.rows_written == 100 and len(rows(db)) == 100
    # A wake-up takes what gathered over GATHER_S (50 ms): about 5 batches each, not one.
    assert stats.reads <= 100 // 4
    # Still sealed by the flush interval (about 25 trades a chunk; the store's thread lets virtual time
    # run, so not exactly), in order, each trade once.
    assert sum(n for _, n in commits) == 100 and 4 <= len(commits) <= 6
