"""Daemons started while NATS is down (systemd restarts a collector during a NATS outage): every role
finishes starting at once, reports NATS down in `/health`, and does its work once a server comes up on the
configured port; the collector collects from the first second, spools, then publishes every trade once.

nats-py's first connect with `max_reconnect_attempts=-1` retries forever, so a daemon whose start waited for
it never finished starting (`link.FIRST_CONNECT_ATTEMPTS`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio

from marketflow.config import default_config
from marketflow.daemon import Daemon
from marketflow.nats.link import NatsError, NatsLink
from marketflow.nats.serve import ServeStatistics
from marketflow.nats.server import NatsServer, single
from marketflow.nats.store import StoreConsumerStatistics
from marketflow.sim import SimConfig, SimServer
from tests.nats.conftest import with_nats
from tests.nats.test_outage import publisher
from tests.pg import PgCluster, shared_cluster
from tests.test_pg_end_to_end import expected_rows, pg_config, wait_all_stored, wait_until

START_S = 10
"""Each daemon must finish starting within this (wall clock: real servers; a first connect to a refused
port fails in well under a second, a start that waits for NATS never ends)."""


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


def serving(daemon: Daemon) -> ServeStatistics:
    stats = daemon.actors["nats_serve"].statistics()
    assert isinstance(stats, ServeStatistics)
    return stats


def analysed(daemon: Daemon) -> int:
    assert daemon.analytics is not None
    return daemon.analytics.statistics().trades


def stored(daemon: Daemon) -> StoreConsumerStatistics:
    stats = daemon.actors["nats_store"].statistics()
    assert isinstance(stats, StoreConsumerStatistics)
    return stats


async def test_roles_started_while_nats_is_down_start_spool_then_publish_every_trade_once(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    server = single(tmp_path / "nats")  # its port is chosen; nothing listens there yet
    sim = SimServer(SimConfig(seed=31, rate=40, max_frames=320))
    url = pg_cluster.create_database()
    try:
        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                await nursery.start(sim.run)
                base = pg_config(tmp_path / "collect", sim, url, markets=("spot",), buffer_max=50)
                collect = Daemon(with_nats(base, [server], ("collect",), flush_interval_s=0.05))
                store = Daemon(with_nats(pg_config(tmp_path / "store", sim, url), [server], ("store",)))
                serve = Daemon(with_nats(pg_config(tmp_path / "serve", sim, url), [server], ("serve",)))
                for daemon in (collect, store, serve):
                    with trio.fail_after(START_S):
                        await nursery.start(daemon.run)
                # Collecting from the first second: trades past `buffer_max` go to the spool.
                await wait_until(lambda: publisher(collect).spooled > 0)
                during = publisher(collect)
                await wait_until(lambda: stored(store).state == "retrying")
                await wait_until(lambda: serving(serve).state == "retrying")
                health = {
                    name: d.health() for name, d in (("collect", collect), ("store", store), ("serve", serve))
                }
                server.start()
                await server.wait_ready()
                rows = await wait_all_stored(pg_cluster, url, sim)
                await wait_until(lambda: not (publisher(collect).spooled or publisher(collect).buffered))
                delivered = sim.delivered_trades()
                await wait_until(lambda: stored(store).trades >= len(delivered))
                after, consumed = publisher(collect), stored(store)
                # The serving daemon subscribes once NATS answers, from when it started: the trades the
                # collector replayed before it subscribed are analysed too, each once.
                await wait_until(lambda: serving(serve).state == "running")
                with trio.move_on_after(30):  # a serve daemon that lost trades never gets there
                    await wait_until(lambda: analysed(serve) >= len(delivered))
                served = analysed(serve)
                # Every role healthy again (a daemon that never connected stays degraded: this times out).
                await wait_until(lambda: all(d.health().status == "healthy" for d in (collect, store, serve)))
                for daemon in (collect, store, serve):
                    await daemon.stop()
                nursery.cancel_scope.cancel()
    finally:
        server.stop()
    assert during.state == "retrying" and during.rows_written == 0
    where = f"NATS {server.url}: connect failed"
    for name, actor in (("collect", "nats_trades"), ("store", "nats_store"), ("serve", "nats_serve")):
        assert health[name].status == "degraded", name
        assert where in health[name].problems[actor], (name, health[name].problems)
    assert after.replayed == after.spooled_total > 0
    # JetStream held every trade once: the store consumer read each exactly once, none a duplicate.
    assert consumed.trades == len(delivered) and consumed.duplicates == 0
    assert [key for key, n in Counter(r[:3] for r in rows).items() if n > 1] == []
    assert sorted(rows) == sorted(expected_rows(delivered))
    assert served == len(delivered)


@attrs.define
class WithoutJetStream(NatsServer):
    """A nats-server that accepts connections but has no JetStream (as one just started may not yet)."""

    def config_text(self) -> str:
        return (
            "\n".join(line for line in super().config_text().splitlines() if "jetstream" not in line) + "\n"
        )


async def test_streams_are_created_once_jetstream_answers_not_only_at_the_first_connect(
    tmp_path: Path,
) -> None:
    plain = WithoutJetStream("plain", tmp_path / "plain")
    server = NatsServer("js", tmp_path / "js", port=plain.port, http_port=plain.http_port)
    link = NatsLink(attrs.evolve(default_config(env={}).nats, servers=(server.url,)), "test")
    try:
        with trio.fail_after(60):
            plain.start()
            await plain.wait_ready()
            for _ in range(2):  # connected, but no stream can be made: every open says so
                with pytest.raises(NatsError, match="connect failed"):
                    await link.open()
            plain.stop()
            server.start()
            await server.wait_ready()
            while True:  # the client reconnects on its own; the next open makes the streams
                try:
                    await link.open()
                    break
                except NatsError:
                    await trio.sleep(0.1)
            assert await link.stream_count("trades", "marketflow.trades.>") == 0
    finally:
        await link.close()
        plain.stop()
        server.stop()
