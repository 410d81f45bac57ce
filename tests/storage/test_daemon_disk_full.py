"""A whole daemon with PostgreSQL stopped and its spool on a full disk (a real 64 KiB tmpfs): the writer says
`disk_full`, `health()` is degraded, `/metrics` shows it; with room and the database back, nothing is lost.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from marketflow.api.metrics import make_registry, render
from marketflow.api.queries import QueryContext
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from marketflow.storage.spool import read_spool
from marketflow.storage.writer import WriterStatistics
from tests.conftest import sim_config, wait_for
from tests.pg import PgCluster
from tests.storage.full_disk import small_tmpfs, tmpfs_mountable
from tests.test_pg_end_to_end import assert_every_delivered_trade_once, wait_all_stored

pytestmark = pytest.mark.skipif(not tmpfs_mountable(), reason="mounting a tmpfs needs root")


def writer_stats(daemon: Daemon) -> WriterStatistics:
    child = next(c for c in daemon.supervisor.statistics().children if c.name == "storage")
    assert isinstance(child.actor, WriterStatistics)
    return child.actor


def metric(daemon: Daemon, name: str) -> float:
    text = render(make_registry(QueryContext(daemon))).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


AGREE_TRIES = 50


def spool_matches_disk(stats: WriterStatistics, on_disk: list[int]) -> bool:
    """The trades the writer still has spooled are exactly the newest records on disk; any older record
    there was already replayed into the database.

    A replayed record stays in its segment until the whole segment is replayed (spool.py): on a busy
    machine the writer starts spooling while the database is still slow, before it is stopped, and replays
    some of it, so the disk can hold more than `spooled`. False also while a spool write is in flight in its
    worker thread (on disk a moment before the writer counts it): the caller reads both again.
    `on_disk`: the trade count of every record on disk, oldest first.
    """
    replayed_prefix = sum(on_disk) - stats.spooled
    return 0 <= replayed_prefix <= stats.replayed and replayed_prefix in itertools.accumulate(
        on_disk, initial=0
    )


async def test_a_daemon_whose_spool_disk_is_full_reports_degraded_and_loses_nothing(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    sim = SimServer(SimConfig(seed=5, rate=40, max_frames=400))
    with small_tmpfs(tmp_path / "spool", 2 * 4096) as (_, make_room), trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = sim_config(tmp_path, sim, markets=("spot",), flush_interval_s=0.05, buffer_max=100)
            daemon = Daemon(attrs.evolve(config, storage=attrs.evolve(config.storage, url=pg_url)))
            await nursery.start(daemon.run)
            await wait_for(lambda: writer_stats(daemon).rows_written >= 50)
            assert daemon.health().status == "healthy"
            assert metric(daemon, "marketflow_storage_spool_failing") == 0
            await trio.to_thread.run_sync(pg_cluster.stop)
            try:
                await wait_for(lambda: writer_stats(daemon).state == "disk_full")
                health = daemon.health()
                assert health.status == "degraded"
                assert health.problems["spool"].startswith("disk_full: cannot write to the spool")
                assert metric(daemon, "marketflow_storage_spool_failing") == 1
                assert metric(daemon, "marketflow_storage_spool_errors_total") >= 1
                for _ in range(AGREE_TRIES):
                    stats = writer_stats(daemon)
                    on_disk = [len(b) for b in read_spool(tmp_path / "spool" / "trades")]
                    if spool_matches_disk(stats, on_disk):
                        break
                    await trio.sleep(0.05)
                assert spool_matches_disk(stats, on_disk), (stats.spooled, stats.replayed, on_disk)
                make_room()
            finally:
                await trio.to_thread.run_sync(pg_cluster.start)
            await wait_for(lambda: not writer_stats(daemon).spool_failing)
            await wait_for(lambda: (s := writer_stats(daemon)).state == "running" and not s.spooled)
            assert "spool" not in daemon.health().problems
            assert metric(daemon, "marketflow_storage_spool_failing") == 0
            rows = await wait_all_stored(pg_cluster, pg_url, sim)
            await daemon.stop()
            nursery.cancel_scope.cancel()
    assert_every_delivered_trade_once(rows, sim.delivered_trades())
