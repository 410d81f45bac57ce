"""Simulator → daemon → PostgreSQL over real sockets, through outages, kills and redundant daemons.

The server is a real PostgreSQL started from the Debian binaries (`tests/pg.py`); an outage really stops
its process. Daemons run in this process where the test needs their statistics, and as `python -m
marketflow run` subprocesses where the test kills them with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from marketflow.config import Config
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer, SimTrade
from marketflow.storage.spool import read_spool
from marketflow.storage.writer import WriterStatistics
from tests.conftest import sim_config
from tests.pg import PgCluster, shared_cluster
from tests.test_end_to_end import sent_everything

Row = tuple[str, str, str, str, str, str, int]
Key = tuple[str, str, str]
PERP = {"spot": "", "linear": "-PERP"}


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    return shared_cluster().create_database()


async def wait_until(condition: Callable[[], bool], interval: float = 0.05) -> None:
    """Poll counters the daemon exposes only as numbers; the caller bounds the time."""
    while not condition():  # noqa: ASYNC110 - no event exists for a counter reaching a value
        await trio.sleep(interval)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def expected_rows(trades: list[SimTrade]) -> list[Row]:
    return [
        (
            "bybit",
            t.symbol.removesuffix("USDT") + "-USDT" + PERP[t.category],
            t.id,
            t.price,
            t.size,
            t.side.lower(),
            t.ts_ms * 1000,
        )
        for t in trades
    ]


def pg_rows(cluster: PgCluster, url: str) -> list[Row]:
    """Every stored trade, read with psql (not with the code under test): exact text, µs since the epoch."""
    database = url.rsplit("/", 1)[1]
    if not cluster.psql(database, "SELECT to_regclass('public.trades')").strip():
        return []  # the daemon has not created the schema yet
    out = cluster.psql(
        database,
        "SELECT exchange, symbol, id, price::text, amount::text, side, "
        "(extract(epoch FROM ts) * 1000000)::bigint FROM trades",
    )
    rows: list[Row] = []
    for line in out.splitlines():
        e, s, i, p, a, side, ts = line.split("|")
        rows.append((e, s, i, p, a, side, int(ts)))
    return rows


async def rows_now(cluster: PgCluster, url: str) -> list[Row]:
    return await trio.to_thread.run_sync(pg_rows, cluster, url)


def assert_every_delivered_trade_once(rows: list[Row], delivered: list[SimTrade]) -> None:
    """No trade twice; every delivered trade stored exactly as sent (REST backfill may add more)."""
    duplicates = [key for key, n in Counter(r[:3] for r in rows).items() if n > 1]
    assert duplicates == []
    stored = {r[:3]: r for r in rows}
    expected = expected_rows(delivered)
    assert [e for e in expected if stored.get(e[:3]) != e] == []


async def wait_all_stored(
    cluster: PgCluster, url: str, sim: SimServer, markets: tuple[str, ...] = ("spot", "linear")
) -> list[Row]:
    """Until the simulator stopped sending (max_frames) and every trade it delivered is in the database.

    Stopped for good (its tapes exhausted, every frame written), not quiet for a moment: a starved process
    is quiet too, and a trade delivered after this returns may be lost when the daemon stops.
    """
    await sent_everything(sim, markets, interval=0.2)
    wanted = {e[:3] for e in expected_rows(sim.delivered_trades())}
    assert wanted
    while True:
        rows = await rows_now(cluster, url)
        if wanted <= {r[:3] for r in rows}:
            return rows
        await trio.sleep(0.2)


def pg_config(tmp_path: Path, sim: SimServer, url: str, **kwargs: Any) -> Config:
    """`sim_config` pointed at PostgreSQL (its storage overrides cannot carry `url` themselves)."""
    config = sim_config(tmp_path, sim, **kwargs)
    return attrs.evolve(config, storage=attrs.evolve(config.storage, url=url))


def writer_stats(daemon: Daemon) -> WriterStatistics:
    child = next(c for c in daemon.supervisor.statistics().children if c.name == "storage")
    assert isinstance(child.actor, WriterStatistics)
    return child.actor


async def test_every_trade_stored_exactly_once_both_categories(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    sim = SimServer(SimConfig(seed=11, rate=200, max_frames=150))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(pg_config(tmp_path, sim, pg_url, flush_interval_s=0.05))
            await nursery.start(daemon.run)
            rows = await wait_all_stored(pg_cluster, pg_url, sim)
            stats = writer_stats(daemon)
            await daemon.stop()
            nursery.cancel_scope.cancel()
    delivered = sim.delivered_trades()
    assert {t.category for t in delivered} == {"spot", "linear"}
    assert len(delivered) >= 4 * 150
    assert_every_delivered_trade_once(rows, delivered)
    assert (stats.engine, stats.errors, stats.spooled_total) == ("postgresql", 0, 0)


@pytest.mark.parametrize(
    "outage_s", [pytest.param(3.0, id="3s"), pytest.param(30.0, id="30s", marks=pytest.mark.slow)]
)
async def test_database_stopped_mid_stream_loses_nothing(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str, outage_s: float
) -> None:
    rate = 40
    sim = SimServer(SimConfig(seed=21, rate=rate, max_frames=int(rate * (outage_s + 6))))
    with trio.fail_after(outage_s + 90):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = pg_config(
                tmp_path, sim, pg_url, markets=("spot",), flush_interval_s=0.05, buffer_max=200
            )
            # The simulator runs in this process: a loop held up for 2 s on a busy machine (the spool's
            # replay when the database is back) looked like a silent venue, and the reconnect lost more
            # trades than the catch-up's 60 per symbol. This test is about the database, not the feed.
            config = attrs.evolve(
                config, feeds=tuple(attrs.evolve(feed, stale_timeout_s=10.0) for feed in config.feeds)
            )
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            await wait_until(lambda: writer_stats(daemon).rows_written >= 50)
            await trio.to_thread.run_sync(pg_cluster.stop)
            try:
                before = writer_stats(daemon)
                await trio.sleep(outage_s)
                during = writer_stats(daemon)
            finally:
                await trio.to_thread.run_sync(pg_cluster.start)
            rows = await wait_all_stored(pg_cluster, pg_url, sim, ("spot",))
            await wait_until(lambda: not (writer_stats(daemon).spooled or writer_stats(daemon).buffered))
            after = writer_stats(daemon)
            await daemon.stop()
            nursery.cancel_scope.cancel()
    # During the outage the writer kept reading: memory up to buffer_max (plus the chunk being cut), the rest
    # on disk.
    assert during.state == "retrying" and during.errors >= 1
    assert during.buffered <= 200 + config.storage.batch_max and during.spooled > 0
    # The bus was drained all along: at least one trade per frame of one topic arrived during the outage.
    assert during.rows_received - before.rows_received >= rate * outage_s
    assert after.spooled == 0 and after.replayed == after.spooled_total > 0
    assert read_spool(Path(tmp_path) / "spool" / "trades") == []
    assert_every_delivered_trade_once(rows, sim.delivered_trades())


def daemon_toml(path: Path, *, state_dir: Path, url: str, sim: SimServer, buffer_max: int) -> Path:
    path.write_text(
        f"""
[daemon]
state_dir = "{state_dir}"
shutdown_timeout_s = 10
[http]
listen = "127.0.0.1:0"
[storage]
url = "{url}"
flush_interval_s = 0.05
buffer_max = {buffer_max}
[supervisor]
backoff_initial_s = 0.05
backoff_max_s = 0.2
[[feeds]]
exchange = "bybit"
market = "spot"
symbols = ["BTCUSDT", "ETHUSDT"]
ws_url = "{sim.bybit_ws_url("spot")}"
rest_url = "{sim.http_url}"
stale_timeout_s = 2
"""
    )
    return path


async def start_daemon(config: Path, log: Path) -> trio.Process:
    env = {k: v for k, v in os.environ.items() if k not in ("MARKETFLOW_STORAGE_URL", "MARKETFLOW_CONFIG")}
    with log.open("ab") as out:
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "marketflow", "run", "--config", str(config)],
            stdout=out,
            stderr=out,
            env=env,
        )


async def stop_daemon(proc: trio.Process, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        code = await proc.wait()
    assert code == 0, tail(log)


def spooled_keys(directory: Path) -> set[Key]:
    return {(t.exchange, t.symbol, t.id) for batch in read_spool(directory) for t in batch}


async def until(condition: Callable[[], Awaitable[bool]], interval: float = 0.05) -> None:
    while not await condition():  # noqa: ASYNC110 - the condition is a database query
        await trio.sleep(interval)


async def test_sigkill_while_the_database_is_down_then_restart_writes_the_spool(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    sim = SimServer(SimConfig(seed=31, rate=40))
    spool_dir = tmp_path / "state" / "spool" / "trades"
    log = tmp_path / "daemon.log"

    async def stored() -> set[Key]:
        return {r[:3] for r in await rows_now(pg_cluster, pg_url)}

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = daemon_toml(
                tmp_path / "m.toml", state_dir=tmp_path / "state", url=pg_url, sim=sim, buffer_max=0
            )
            first = await start_daemon(config, log)
            try:
                await until(lambda: _at_least(stored, 20))
                await trio.to_thread.run_sync(pg_cluster.stop)
                try:
                    await until(lambda: _true(len(spooled_keys(spool_dir)) >= 100))
                    first.kill()  # SIGKILL: no flush, no goodbye
                    await first.wait()
                    killed_at_ms = time.time() * 1000
                    spooled = spooled_keys(spool_dir)
                finally:
                    await trio.to_thread.run_sync(pg_cluster.start)
            finally:
                if first.returncode is None:
                    first.kill()
            assert first.returncode == -signal.SIGKILL
            second = await start_daemon(config, log)
            try:
                await until(lambda: _superset(stored, spooled))
                await until(lambda: _true(not any(spool_dir.glob("*.spool"))))
                # The simulator keeps sending, and what it delivers while the daemon stops may never be
                # read: the check is on what it had delivered before the stop, once that is stored.
                # SIGKILL lost at most what arrived just before it (one flush interval; 2 s of slack for a
                # busy machine).
                delivered = [
                    t for t in sim.delivered_trades() if not killed_at_ms - 2000 <= t.ts_ms <= killed_at_ms
                ]
                wanted = {("bybit", *_key(t)) for t in delivered}
                with trio.move_on_after(20):
                    await until(lambda: _superset(stored, wanted))
            finally:
                await stop_daemon(second, log)
            nursery.cancel_scope.cancel()
    rows = await rows_now(pg_cluster, pg_url)
    keys = {r[:3] for r in rows}
    assert spooled <= keys and len(rows) == len(keys)  # every spooled trade written, none twice
    missing = [(t.symbol, t.id, t.ts_ms - killed_at_ms) for t in delivered if ("bybit", *_key(t)) not in keys]
    assert missing == [], f"ms relative to the kill; spooled {len(spooled)}; {tail(log)}"
    assert_every_delivered_trade_once(rows, delivered)


def _key(t: SimTrade) -> tuple[str, str]:
    return (t.symbol.removesuffix("USDT") + "-USDT", t.id)


async def _at_least(fetch: Any, n: int) -> bool:
    return len(await fetch()) >= n


async def _superset(fetch: Any, keys: set[Key]) -> bool:
    return bool(keys <= await fetch())


async def _true(value: bool) -> bool:
    return value


async def test_two_daemons_one_database_no_duplicates_and_no_gap_when_one_dies(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    rate = 40
    sim = SimServer(SimConfig(seed=41, rate=rate, max_frames=rate * 6))
    log = tmp_path / "a.log"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config_a = daemon_toml(
                tmp_path / "a.toml", state_dir=tmp_path / "a", url=pg_url, sim=sim, buffer_max=1000
            )
            # The tape runs for 6 s from the first subscription; a process can take longer than that to
            # start on a busy machine, and would then never write a trade b also writes: b starts once
            # a has subscribed. (Daemons creating the schema at once: storage/test_migrate.py.)
            a = await start_daemon(config_a, log)
            tapes = [sim.trade_feed("bybit", "spot", native) for native in ("BTCUSDT", "ETHUSDT")]
            b = Daemon(pg_config(tmp_path / "b", sim, pg_url, markets=("spot",), flush_interval_s=0.05))
            try:
                await wait_until(lambda: all(tape.subscribed for tape in tapes))
                await nursery.start(b.run)
                # Both write every trade: b finds some already written by a.
                await wait_until(lambda: writer_stats(b).duplicates > 0)
                a.kill()
                await a.wait()
            finally:
                if a.returncode is None:
                    a.kill()
            assert a.returncode == -signal.SIGKILL, tail(log)
            rows = await wait_all_stored(pg_cluster, pg_url, sim, ("spot",))
            stats = writer_stats(b)
            await b.stop()
            nursery.cancel_scope.cancel()
    assert stats.errors == 0 and stats.rows_written < len(rows)  # b did not write everything itself
    assert_every_delivered_trade_once(rows, sim.delivered_trades())
