"""The writer with the database down: it keeps reading, buffers, spools, replays in order: nothing lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from marketflow.model import Trade
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Bus, Overflow
from marketflow.storage import open_store
from marketflow.storage.spool import HEADER_SIZE, Spool, read_spool, scan_segment
from marketflow.storage.writer import StorageWriter
from tests.storage.helpers import SwitchableStore, index_of, trades, wait_real


def make(
    store: SwitchableStore, bus: Bus[Trade], spool_dir: Path, *, buffer_max: int, capacity: int = 2
) -> StorageWriter:
    return StorageWriter(
        store,
        bus.subscribe("storage", capacity, Overflow.BLOCK),
        batch_max=10,
        flush_interval_s=0.01,
        backoff=Backoff(0.01, 0.05),
        spool=Spool(spool_dir),
        buffer_max=buffer_max,
        shutdown_write_s=1.0,
    )


def flat(batches: list[list[Trade]]) -> list[int]:
    return [index_of(t) for batch in batches for t in batch]


async def test_reads_on_buffers_then_spools_and_replays_in_order(store_url: str, tmp_path: Path) -> None:
    store = SwitchableStore(open_store(store_url), down=True)
    bus: Bus[Trade] = Bus("trades")
    writer = make(store, bus, tmp_path / "spool", buffer_max=50)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            # 100 batches through a subscription that holds 2: only a writer that keeps reading lets them in.
            for start in range(0, 500, 5):
                await bus.publish(trades(start, start + 5))
            await wait_real(lambda: writer.statistics().buffered <= 50 and writer.statistics().spooled >= 450)
            stats = writer.statistics()
            assert stats.rows_received == 500 and stats.rows_written == 0
            assert stats.state == "retrying" and stats.errors >= 1 and store.failures >= 1
            assert stats.buffered + stats.spooled == 500 and stats.lag_ms is not None
            store.down = False
            # A replayed record leaves the spool just after its commit: wait for both.
            await wait_real(
                lambda: writer.statistics().rows_written == 500 and not writer.statistics().spooled
            )
            stats = writer.statistics()
            assert (stats.spooled, stats.buffered, stats.duplicates) == (0, 0, 0)
            assert stats.replayed == stats.spooled_total >= 450
            bus.close()
    assert store.written_indexes() == list(range(500))  # memory first, then the spool, all in arrival order
    assert read_spool(tmp_path / "spool") == []


async def test_buffer_max_zero_keeps_nothing_in_memory_during_an_outage(tmp_path: Path) -> None:
    """What a SIGKILL in an outage would lose: with buffer_max = 0, only the chunk being assembled."""
    store = SwitchableStore(open_store(f"sqlite:///{tmp_path}/t.db"), down=True)
    bus: Bus[Trade] = Bus("trades")
    writer = make(store, bus, tmp_path / "spool", buffer_max=0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for start in range(0, 100, 10):
                await bus.publish(trades(start, start + 10))
            await wait_real(lambda: writer.statistics().spooled == 100)
            assert writer.statistics().buffered == 0
            nursery.cancel_scope.cancel()  # killed: no shutdown flush at all
    assert flat(read_spool(tmp_path / "spool")) == list(range(100))


async def test_a_cancelled_writer_still_puts_what_memory_holds_on_disk(tmp_path: Path) -> None:
    """Cancelled (a supervisor's deadline, a restart) rather than killed: nothing in memory is dropped."""
    store = SwitchableStore(open_store(f"sqlite:///{tmp_path}/t.db"), down=True)
    bus: Bus[Trade] = Bus("trades")
    writer = make(store, bus, tmp_path / "spool", buffer_max=10_000)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish(trades(0, 95))
            await wait_real(lambda: writer.statistics().buffered == 95)
            nursery.cancel_scope.cancel()
    assert flat(read_spool(tmp_path / "spool")) == list(range(95))


async def test_shutdown_with_the_database_down_spools_memory_and_the_next_start_replays_it_first(
    store_url: str, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    down = SwitchableStore(open_store(store_url), down=True)
    bus: Bus[Trade] = Bus("trades")
    writer = make(down, bus, spool_dir, buffer_max=10_000)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for start in range(0, 300, 30):
                await bus.publish(trades(start, start + 30))
            await wait_real(lambda: writer.statistics().buffered == 300)
            assert writer.statistics().spooled == 0  # all of it fits in memory
            bus.close()  # SIGTERM: the writer must not wait for the database to come back
    assert writer.statistics().state == "stopped"
    assert flat(read_spool(spool_dir)) == list(range(300))

    up = SwitchableStore(open_store(store_url))
    bus = Bus("trades")
    writer = make(up, bus, spool_dir, buffer_max=10_000)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish(trades(300, 320))
            await wait_real(lambda: writer.statistics().rows_written == 320)
            bus.close()
    assert up.written_indexes() == list(range(320))  # the spool first, then what arrived after the start
    assert writer.statistics().replayed == 300
    assert read_spool(spool_dir) == []
    assert await count(store_url) == 320


async def count(url: str) -> int:
    store = open_store(url)
    await store.open()
    try:
        return await store.count_trades()  # type: ignore[attr-defined, no-any-return]
    finally:
        await store.close()


async def test_a_damaged_spool_record_is_reported_and_skipped_and_the_rest_written(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    await spool.open()
    for start in (0, 10, 20):
        await spool.append(trades(start, start + 10))
    await spool.close()
    (segment,) = spool_dir.glob("*.spool")
    data = bytearray(segment.read_bytes())
    second = scan_segment(bytes(data))[0][1][0]
    data[second + HEADER_SIZE + 2] ^= 0x55
    segment.write_bytes(bytes(data))

    store = SwitchableStore(open_store(store_url))
    bus: Bus[Trade] = Bus("trades")
    writer = make(store, bus, spool_dir, buffer_max=100)
    with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"), trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish(trades(30, 35))
            await wait_real(lambda: writer.statistics().rows_written == 25)
            bus.close()
    assert store.written_indexes() == [*range(10), *range(20, 35)]
    assert writer.statistics().spool_corrupt == 1
    reports = [r for r in caplog.records if "spool record damaged" in r.getMessage()]
    assert [(r.path, r.offset, r.reason) for r in reports] == [  # type: ignore[attr-defined]
        (str(segment), second, "payload checksum mismatch")
    ]
    assert await count(store_url) == 25
