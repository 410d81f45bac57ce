"""SQLite reads run on their own thread limiter: slow scans cannot starve trio's default one (issue 14.7)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import trio

from marketflow.storage.sqlite import SqliteTradeStore
from tests.conftest import wait_for
from tests.storage.helpers import BASE_TS, trades


async def test_saturated_reads_leave_the_default_thread_limiter_free(tmp_path: Path) -> None:
    store = SqliteTradeStore(f"sqlite:///{tmp_path}/reads.db", read_threads=2)
    await store.open()
    await store.write_trades(trades(0, 3))
    default = trio.to_thread.current_default_thread_limiter()
    default.total_tokens = 2  # as few threads as the reads may hold, so sharing it would starve it
    release = threading.Event()
    lock = threading.Lock()
    scanning = [0]

    def consume(rows: Sequence[object]) -> bool:
        with lock:
            scanning[0] += 1
        release.wait()  # a slow scan, holding its worker thread
        return True

    async def scan() -> None:
        await store.scan_trades("bybit", "BTC-USDT", BASE_TS, None, consume)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(4):  # more scans than either limiter has threads
                nursery.start_soon(scan)
            with trio.fail_after(10):
                await wait_for(
                    lambda: scanning[0] == 2 and store.read_limiter.statistics().tasks_waiting == 2
                )
                # A DNS lookup, a capture write, a config reload: anything on the default limiter.
                assert await trio.to_thread.run_sync(lambda: "ran") == "ran"
            assert default.borrowed_tokens == 0
            assert scanning[0] == 2
            release.set()
    finally:
        release.set()
    assert scanning[0] == 4
    # The other reads take the read limiter too.
    assert len(await store.query_trades("bybit", "BTC-USDT")) == 3
    assert await store.count_trades() == 3
    assert store.read_limiter.borrowed_tokens == 0
    await store.close()
