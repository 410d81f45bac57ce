"""The PostgreSQL store against a real server: exact, idempotent, redacted, reconnecting, trio-friendly."""

from __future__ import annotations

import asyncio
import sys

import pytest
import trio

from marketflow.storage import open_store
from marketflow.storage.migrate import display_url
from marketflow.storage.postgres import AsyncioThread, PostgresTradeStore, WriteMethod
from marketflow.storage.writer import StorageError
from tests.pg import PgCluster
from tests.storage.helpers import trade, trades


@pytest.mark.parametrize("method", ["auto", "staging", "unnest"])
async def test_store_is_idempotent_and_exact(pg_cluster: PgCluster, pg_url: str, method: WriteMethod) -> None:
    store = PostgresTradeStore(pg_url, method=method)
    await store.open()
    try:
        assert await store.write_trades(trades(0, 10)) == 10
        assert await store.write_trades([*trades(5, 10), trade(10)]) == 1  # duplicates skipped, new one kept
        assert await store.write_trades(trades(0, 11)) == 0
        assert await store.count_trades() == 11
        newest = await store.query_trades(symbol="BTC-USDT", limit=2)
        assert newest == [trade(10), trade(9)]
        assert str(newest[0].price) == "65114.20" and str(newest[0].amount) == "0.001000"  # exact, as sent
        window = await store.query_trades(exchange="bybit", since=trade(3).ts, until=trade(6).ts)
        assert [t.id for t in window] == [trade(5).id, trade(4).id, trade(3).id]
    finally:
        await store.close()
    database = pg_url.rsplit("/", 1)[1]
    types = pg_cluster.psql(
        database, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'trades'"
    )
    assert "price|numeric" in types and "ts|timestamp with time zone" in types
    assert "recv_ts|timestamp with time zone" in types
    assert pg_cluster.psql(database, "SELECT price, ts FROM trades ORDER BY ts LIMIT 1").strip() == (
        "65114.20|2023-11-14 22:13:20+00"
    )


async def test_optimistic_copy_falls_back_on_duplicates(pg_url: str) -> None:
    store = PostgresTradeStore(pg_url)
    await store.open()
    try:
        assert await store.write_trades(trades(0, 100)) == 100
        assert store.copy_conflicts == 0  # all new: the straight COPY took it
        assert await store.write_trades(trades(50, 150)) == 50  # COPY fails as a whole, staging inserts
        assert store.copy_conflicts == 1
        assert await store.write_trades(trades(150, 160)) == 10  # still on the staging path for a while
        assert store.copy_conflicts == 1 and await store.count_trades() == 160
    finally:
        await store.close()


def test_display_url_hides_passwords() -> None:
    assert (
        display_url("postgresql://mf:s3cret@db.example:5432/market")
        == "postgresql://mf:***@db.example:5432/market"
    )
    assert display_url("postgresql+asyncpg://mf@db/market?password=s3cret&sslmode=require") == (
        "postgresql+asyncpg://mf@db/market?password=***&sslmode=require"
    )
    assert display_url("sqlite:///./var/marketflow.db") == "sqlite:///./var/marketflow.db"


async def test_store_and_its_errors_never_show_the_password(pg_cluster: PgCluster) -> None:
    store = open_store(pg_cluster.url("no_such_db", password="s3cret"))
    assert store.engine_name == "postgresql" and "s3cret" not in store.display_url
    assert store.display_url == f"postgresql://postgres:***@127.0.0.1:{pg_cluster.port}/no_such_db"
    with pytest.raises(StorageError) as caught:
        await store.open()
    assert "s3cret" not in str(caught.value) and "no_such_db" in str(caught.value)
    await store.close()


async def test_the_store_survives_a_server_restart(pg_cluster: PgCluster, pg_url: str) -> None:
    store = PostgresTradeStore(pg_url)
    await store.open()
    try:
        assert await store.write_trades(trades(0, 10)) == 10
        await trio.to_thread.run_sync(pg_cluster.stop)
        try:
            with pytest.raises(StorageError, match="insert into PostgreSQL postgresql://postgres@127.0.0.1"):
                await store.write_trades(trades(10, 20))
        finally:
            await trio.to_thread.run_sync(pg_cluster.start)
        assert await store.write_trades(trades(10, 20)) == 10  # the pool reconnects by itself
        assert await store.count_trades() == 20
    finally:
        await store.close()


async def test_reopen_after_close(pg_url: str) -> None:
    store = PostgresTradeStore(pg_url)
    for start in (0, 10):
        await store.open()
        assert await store.write_trades(trades(start, start + 10)) == 10
        await store.close()
    await store.open()
    assert await store.count_trades() == 20
    await store.close()


async def test_asyncio_thread_cancels_the_asyncio_side_and_leaves_the_loop_policy_alone() -> None:
    policy = type(asyncio.get_event_loop_policy())
    bridge = AsyncioThread("test-bridge")
    bridge.start()
    cancelled = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def sleeper() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            token.run_sync_soon(cancelled.set)
            raise

    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    try:
        assert await bridge.run(add, 2, 3) == 5
        with trio.fail_after(5):
            with trio.move_on_after(0.05):
                await bridge.run(sleeper)
            await cancelled.wait()  # trio's cancellation reached the asyncio task
        with pytest.raises(ZeroDivisionError):
            await bridge.run(_divide_by_zero)
    finally:
        await trio.to_thread.run_sync(bridge.stop)
    assert not bridge.running
    assert type(asyncio.get_event_loop_policy()) is policy
    assert "trio_asyncio" not in sys.modules


async def _divide_by_zero() -> None:
    _ = 1 / 0
