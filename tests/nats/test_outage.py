"""NATS unreachable: the collector keeps collecting, holds `buffer_max` trades in memory and spools the rest,
then publishes everything in order when NATS is back; the store role writes every trade once.

The server is SIGKILLed mid-stream, so publishes in flight never get an ack (nats-py issue #985: a failed
`publish_async` future never resolves): the publisher's timeout turns that into a retry instead of a hang.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio

from marketflow.daemon import Daemon
from marketflow.nats.server import NatsServer
from marketflow.sim import SimConfig, SimServer
from marketflow.storage.writer import WriterStatistics
from tests.nats.conftest import with_nats
from tests.pg import PgCluster, shared_cluster
from tests.test_pg_end_to_end import expected_rows, pg_config, wait_all_stored, wait_until


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


def publisher(daemon: Daemon) -> WriterStatistics:
    stats = daemon.actors["nats_trades"].statistics()
    assert isinstance(stats, WriterStatistics)
    return stats


async def test_nats_down_mid_stream_collector_spools_then_publishes_everything_once(
    tmp_path: Path, pg_cluster: PgCluster, nats_server: NatsServer
) -> None:
    rate, outage_s = 40, 8.0
    sim = SimServer(SimConfig(seed=23, rate=rate, max_frames=int(rate * (outage_s + 6))))
    url = pg_cluster.create_database()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            base = pg_config(tmp_path / "collect", sim, url, markets=("spot",), buffer_max=50)
            collect = Daemon(with_nats(base, [nats_server], ("collect",), flush_interval_s=0.05))
            store = Daemon(with_nats(pg_config(tmp_path / "store", sim, url), [nats_server], ("store",)))
            await nursery.start(store.run)
            await nursery.start(collect.run)
            await wait_until(lambda: publisher(collect).rows_written >= 50)
            nats_server.kill()
            try:
                await wait_until(lambda: publisher(collect).spooled > 0 and publisher(collect).errors > 0)
                during = publisher(collect)
                health = collect.health()
            finally:
                nats_server.start()
            await nats_server.wait_ready()
            rows = await wait_all_stored(pg_cluster, url, sim)
            await wait_until(lambda: not (publisher(collect).spooled or publisher(collect).buffered))
            after = publisher(collect)
            await collect.stop()
            await store.stop()
            nursery.cancel_scope.cancel()
    assert (
        during.state == "retrying" and during.errors >= 1 and during.buffered <= 50 + base.storage.batch_max
    )
    assert health.status == "degraded" and health.problems["nats_trades"].startswith("retrying: NatsError")
    assert after.replayed == after.spooled_total > 0
    assert [key for key, n in Counter(r[:3] for r in rows).items() if n > 1] == []
    assert sorted(rows) == sorted(expected_rows(sim.delivered_trades()))
