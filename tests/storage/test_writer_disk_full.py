"""The writer with the database down and the disk full: memory up to buffer_max, then the bus backs up;
it says so, keeps trying the spool, never counts a chunk as spooled that is not on disk, and loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from marketflow.model import Trade
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Bus, Overflow
from marketflow.storage import open_store
from marketflow.storage.spool import Spool, read_spool
from marketflow.storage.writer import StorageWriter
from tests.storage.full_disk import run_full_disk, tmpfs_mountable
from tests.storage.helpers import SwitchableStore, index_of, trades, wait_real

TOTAL = 400
BUFFER_MAX = 100
BATCH = 10
CAPACITY = 2 * 4096  # six records of ten trades


def on_disk(spool_dir: Path) -> list[int]:
    return [index_of(t) for batch in read_spool(spool_dir) for t in batch]


def subscriber_full(bus: Bus[Trade]) -> bool:
    """The writer stopped reading: the bus backs up."""
    (sub,) = bus.statistics().subscribers
    return sub.queued_batches == sub.capacity


async def database_down_and_disk_full(spool_dir: Path, work: Path, make_room: Callable[[], None]) -> None:
    store = SwitchableStore(open_store(f"sqlite:///{work}/t.db"), down=True)
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 2, Overflow.BLOCK),
        batch_max=BATCH,
        flush_interval_s=0.01,
        backoff=Backoff(0.01, 0.05),
        spool=Spool(spool_dir),
        buffer_max=BUFFER_MAX,
        shutdown_write_s=1.0,
    )
    published = 0

    async def publish() -> None:
        nonlocal published
        for start in range(0, TOTAL, BATCH):
            await bus.publish(trades(start, start + BATCH))
            published = start + BATCH

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            nursery.start_soon(publish)
            await wait_real(lambda: writer.statistics().state == "disk_full" and subscriber_full(bus))
            errors = writer.statistics().spool_errors
            # It keeps trying the spool (after each failed database attempt), and stays where it is.
            await wait_real(lambda: writer.statistics().spool_errors >= errors + 3)
            stats = writer.statistics()
            assert stats.state == "disk_full" and stats.spool_failing and subscriber_full(bus)
            assert stats.spool_error is not None and "cannot write to the spool" in stats.spool_error
            assert published < TOTAL
            # Counted as spooled: exactly what is on disk; the rest is in memory, within bounds.
            assert stats.spooled == stats.spooled_total == len(on_disk(spool_dir)) > 0
            assert stats.buffered + stats.spooled == stats.rows_received
            assert BUFFER_MAX < stats.buffered <= BUFFER_MAX + 4 * BATCH

            make_room()
            # The next retry writes to the spool again; everything published gets in.
            await wait_real(lambda: published == TOTAL and writer.statistics().rows_received == TOTAL)
            await wait_real(lambda: writer.statistics().buffered <= BUFFER_MAX)
            stats = writer.statistics()
            assert stats.state == "retrying" and not stats.spool_failing and stats.spool_error is None
            assert stats.spooled == len(on_disk(spool_dir)) == TOTAL - stats.buffered

            store.down = False
            await wait_real(
                lambda: writer.statistics().rows_written == TOTAL and not writer.statistics().spooled
            )
            bus.close()
    assert store.written_indexes() == list(range(TOTAL))  # in arrival order, none lost, none twice
    assert read_spool(spool_dir) == []


async def stopped_while_the_disk_is_full(spool_dir: Path, work: Path, make_room: Callable[[], None]) -> None:
    """Neither the database nor the disk takes them: the writer still stops, and says how many are lost."""
    lost: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lost.append  # type: ignore[method-assign]
    logging.getLogger("marketflow.storage").addHandler(handler)
    store = SwitchableStore(open_store(f"sqlite:///{work}/t.db"), down=True)
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 2, Overflow.BLOCK),
        batch_max=BATCH,
        flush_interval_s=0.01,
        backoff=Backoff(0.01, 0.05),
        spool=Spool(spool_dir),
        buffer_max=BUFFER_MAX,
        shutdown_write_s=1.0,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)

            async def publish() -> None:
                for start in range(0, TOTAL, BATCH):
                    await bus.publish(trades(start, start + BATCH))

            nursery.start_soon(publish)
            await wait_real(lambda: writer.statistics().state == "disk_full" and subscriber_full(bus))
            held = writer.statistics().buffered
            nursery.cancel_scope.cancel()  # the supervisor's shutdown deadline
    stats = writer.statistics()
    assert stats.state == "stopped" and stats.spooled == len(on_disk(spool_dir)) > 0
    (report,) = [r for r in lost if "they are lost" in r.getMessage()]
    assert report.trades == held > BUFFER_MAX  # type: ignore[attr-defined]
    assert stats.spooled + held == stats.rows_received


KINDS = [
    pytest.param(
        "tmpfs", marks=pytest.mark.skipif(not tmpfs_mountable(), reason="mounting a tmpfs needs root")
    ),
    "rlimit",
]


@pytest.mark.parametrize("kind", KINDS)
def test_database_down_and_disk_full_memory_bounded_then_nothing_lost(kind: str, tmp_path: Path) -> None:
    run_full_disk(kind, database_down_and_disk_full, tmp_path, CAPACITY)


@pytest.mark.parametrize("kind", KINDS)
def test_stopped_with_database_down_and_disk_full_reports_what_is_lost(kind: str, tmp_path: Path) -> None:
    run_full_disk(kind, stopped_while_the_disk_is_full, tmp_path, CAPACITY)
