"""The throwaway PostgreSQL cluster used by `marketflow bench` (and, through tests/pg.py, by the suite)."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from marketflow.bench.pgcluster import PgCluster, have_server_binaries, throwaway_cluster

pytestmark = pytest.mark.skipif(
    not have_server_binaries() and not os.environ.get("CI"),
    reason="no PostgreSQL server binaries (CI must have them, so there this fails instead)",
)


async def _roundtrip(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        await conn.execute("CREATE TABLE t (x int)")
        await conn.execute("INSERT INTO t VALUES (1), (2)")
        return int(await conn.fetchval("SELECT sum(x) FROM t"))
    finally:
        await conn.close()


def test_cluster_starts_serves_a_database_and_is_removed() -> None:
    with throwaway_cluster() as cluster:
        assert cluster.is_running()
        assert cluster.is_ready()
        url = cluster.create_database("bench")
        dsn = cluster.dsn("bench")
        assert url == dsn.url == f"postgresql://postgres@127.0.0.1:{cluster.port}/bench"
        assert (dsn.host, dsn.port, dsn.user, dsn.database) == (
            "127.0.0.1",
            cluster.port,
            "postgres",
            "bench",
        )
        assert asyncio.run(_roundtrip(url)) == 3
        assert cluster.psql("bench", "SELECT count(*) FROM t").strip() == "2"
        root = cluster.root
    assert not root.exists()
    assert not cluster.is_running()


def test_cluster_stops_and_starts_again() -> None:
    with PgCluster() as cluster:
        cluster.stop()
        assert not cluster.is_ready()
        cluster.start()
        assert cluster.psql("postgres", "SELECT 1").strip() == "1"
