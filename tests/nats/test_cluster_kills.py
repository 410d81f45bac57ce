"""A real 3-node JetStream cluster (replicas 3), two redundant collectors (a hot pair) and two store daemons
as separate processes, a serving daemon in this process. SIGKILL one collector, one NATS node and one store
daemon mid-stream: every trade the simulator delivered is stored exactly once, and the serving daemon's
analytics count each trade once (equal to one engine fed the tape's trades once)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from marketflow.daemon import Daemon
from marketflow.nats.server import NatsServer
from marketflow.sim import SimConfig, SimServer
from tests.nats.conftest import candles_of, single_process_candles, with_nats
from tests.pg import PgCluster, shared_cluster
from tests.test_pg_end_to_end import (
    expected_rows,
    pg_config,
    rows_now,
    start_daemon,
    stop_daemon,
    tail,
    wait_all_stored,
    wait_until,
)


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


def role_toml(
    path: Path, *, roles: tuple[str, ...], url: str, sim: SimServer, servers: list[NatsServer]
) -> Path:
    quoted = ", ".join(f'"{r}"' for r in roles)
    nats = ", ".join(f'"{s.url}"' for s in servers)
    feeds = "".join(
        f"""
[[feeds]]
exchange = "bybit"
market = "{market}"
symbols = ["BTCUSDT", "ETHUSDT"]
channels = ["trades"]
ws_url = "{sim.bybit_ws_url(market)}"
rest_url = "{sim.http_url}"
stale_timeout_s = 2
"""
        for market in ("spot", "linear")
    )
    path.write_text(
        f"""
[daemon]
state_dir = "{path.with_suffix("")}"
shutdown_timeout_s = 10
roles = [{quoted}]
[http]
listen = "127.0.0.1:0"
[storage]
url = "{url}"
flush_interval_s = 0.05
[supervisor]
backoff_initial_s = 0.05
backoff_max_s = 0.5
[nats]
servers = [{nats}]
stream_replicas = 3
flush_interval_s = 0.05
ack_wait_s = 2
{feeds}"""
    )
    return path


async def until_healthy(log: Path) -> None:
    """Until the daemon writing `log` reports healthy: every feed streaming, storage running."""
    text = ""
    while "HTTP API listening" not in text:
        await trio.sleep(0.05)
        text = await trio.Path(log).read_text()
    url = text.split("HTTP API listening  url=")[1].split()[0]
    async with httpx.AsyncClient(base_url=url) as client:
        while (await client.get("/health")).json()["status"] != "healthy":  # noqa: ASYNC110 - over HTTP
            await trio.sleep(0.05)


def analysed(daemon: Daemon) -> int:
    assert daemon.analytics is not None
    return daemon.analytics.statistics().trades


async def test_sigkill_a_collector_a_nats_node_and_a_store_daemon_loses_nothing_and_counts_once(
    tmp_path: Path, pg_cluster: PgCluster, nats_cluster: list[NatsServer]
) -> None:
    rate = 40
    sim = SimServer(SimConfig(seed=5, rate=rate, max_frames=rate * 14))
    url = pg_cluster.create_database()
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "s1", "s2")}
    procs: dict[str, trio.Process] = {}

    async def stored() -> int:
        return len(await rows_now(pg_cluster, url))

    async def grows(by: int) -> None:
        target = await stored() + by
        while await stored() < target:  # noqa: ASYNC110 - the condition is a database query
            await trio.sleep(0.1)

    def toml(name: str, roles: tuple[str, ...]) -> Path:
        return role_toml(tmp_path / f"{name}.toml", roles=roles, url=url, sim=sim, servers=nats_cluster)

    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            try:
                for name in ("s1", "s2"):
                    procs[name] = await start_daemon(toml(name, ("store",)), logs[name])
                serve = Daemon(
                    with_nats(
                        pg_config(tmp_path / "serve", sim, url), nats_cluster, ("serve",), stream_replicas=3
                    )
                )
                await nursery.start(serve.run)
                await wait_until(lambda: serve.actors["nats_serve"].statistics().state == "running")
                for name in ("a", "b"):
                    procs[name] = await start_daemon(toml(name, ("collect",)), logs[name])
                for name in ("a", "b"):  # a hot pair: both stream before one dies
                    await until_healthy(logs[name])
                await grows(100)
                procs["a"].kill()  # one of the hot pair: the other has every trade too
                marks = {"a": time.time_ns() // 1000}
                await grows(100)
                nats_cluster[0].kill()  # one NATS node, maybe a stream or consumer leader
                marks["n1"] = time.time_ns() // 1000
                await grows(100)
                procs["s1"].kill()  # a store daemon holding unacked messages: JetStream redelivers them
                marks["s1"] = time.time_ns() // 1000
                with trio.move_on_after(40):
                    rows = await wait_all_stored(pg_cluster, url, sim)
                rows = await rows_now(pg_cluster, url)
                stored_keys = {r[:3] for r in rows}
                missing = [e for e in expected_rows(sim.delivered_trades()) if e[:3] not in stored_keys]
                assert missing == [], (
                    len(missing),
                    sorted({m[1] for m in missing}),
                    {k: (min(m[6] for m in missing) - v) // 1000 for k, v in marks.items()},
                    {k: (max(m[6] for m in missing) - v) // 1000 for k, v in marks.items()},
                )
                delivered = sim.delivered_trades()
                await wait_until(lambda: analysed(serve) >= len(delivered))
                await trio.sleep(0.5)  # a late duplicate would show up in the counts now
                assert serve.analytics is not None
                served = candles_of(serve.analytics)
                await serve.stop()
                for name in ("b", "s2"):
                    await stop_daemon(procs[name], logs[name])
            finally:
                for proc in procs.values():
                    if proc.returncode is None:
                        proc.kill()
            nursery.cancel_scope.cancel()
    assert procs["a"].returncode == procs["s1"].returncode == -signal.SIGKILL
    assert [key for key, n in Counter(r[:3] for r in rows).items() if n > 1] == []
    assert sorted(rows) == sorted(expected_rows(delivered)), tail(logs["b"])
    assert analysed(serve) == len(delivered)
    assert served == single_process_candles(delivered, serve.config)
