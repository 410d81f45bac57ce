"""Storage benchmark: rows/s through the writer into PostgreSQL and SQLite, against a raw asyncpg COPY.

    python -m benchmarks.storage [--rows N] [--repeat R] [--url postgresql://...] [--json PATH]

Without `--url` it starts a throwaway PostgreSQL cluster from the Debian binaries (durable settings:
fsync on, as in production). Every figure is the median of R runs, with the methods interleaved run by run
so machine noise spreads over all of them; the table is emptied before each run. What is measured:

- asyncpg insert paths on plain asyncio with ready-made rows: raw COPY (the baseline: not idempotent),
  COPY into a staging table + INSERT ON CONFLICT, executemany INSERT ON CONFLICT, INSERT ... unnest ON
  CONFLICT, and the store's optimistic COPY (raw COPY, staging path only after a duplicate);
- the two bridges from trio to asyncpg: a dedicated asyncio thread (what the store uses) and trio-asyncio
  (run in a subprocess, because importing trio_asyncio changes the asyncio loop policy process-wide): COPY
  throughput and the cost of one round trip (`SELECT 1`);
- the whole writer actor (bus batches of 100 trades → chunks of `batch_max` → store) into PostgreSQL and
  SQLite, and the disk spool's append rate (one fsync per chunk) — the path taken while the database is down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import trio

from marketflow.model import Trade
from marketflow.runtime.bus import Bus, Overflow
from marketflow.storage import migrate
from marketflow.storage.postgres import (
    AsyncioThread,
    PostgresTradeStore,
    copy_rows,
    init_connection,
    insert_staged,
    insert_unnest,
    records,
)
from marketflow.storage.spool import Spool
from marketflow.storage.sqlite import SqliteTradeStore
from marketflow.storage.writer import StorageWriter

BATCH = 5000
BUS_BATCH = 100
_EXECUTEMANY = (
    "INSERT INTO trades (exchange, symbol, ts, id, price, amount, side, recv_ts) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
)


def make_trades(n: int) -> list[Trade]:
    base = 1_750_000_000_000_000
    return [
        Trade(
            "bybit",
            "BTC-USDT" if i % 2 else "ETH-USDT",
            str(4_000_000_000 + i),
            Decimal("65114.20") + i % 97,
            Decimal("0.001000"),
            "buy" if i % 3 else "sell",
            base + i * 250,
            base + i * 250 + 400,
        )
        for i in range(n)
    ]


def chunks(rows: list[Any], size: int = BATCH) -> list[list[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# -- asyncpg on plain asyncio -------------------------------------------------------------------------------


async def _executemany(conn: asyncpg.Connection, rows: list[Any]) -> int:
    async with conn.transaction():
        await conn.executemany(_EXECUTEMANY, rows)
    return len(rows)


async def _optimistic(conn: asyncpg.Connection, rows: list[Any]) -> int:
    try:
        return await copy_rows(conn, rows)
    except asyncpg.UniqueViolationError:
        return await insert_staged(conn, rows)


ASYNCPG_METHODS: dict[str, Callable[[asyncpg.Connection, list[Any]], Awaitable[int]]] = {
    "raw COPY (baseline)": copy_rows,
    "optimistic COPY (store)": _optimistic,
    "COPY staging + ON CONFLICT": insert_staged,
    "executemany ON CONFLICT": _executemany,
    "unnest ON CONFLICT": insert_unnest,
}


async def asyncpg_run(url: str, method: str, batches: list[list[Any]]) -> float:
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        await conn.execute("TRUNCATE trades")
        fn = ASYNCPG_METHODS[method]
        started = time.perf_counter()
        for batch in batches:
            await fn(conn, batch)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return sum(map(len, batches)) / elapsed


async def asyncpg_rerun(url: str, batches: list[list[Any]]) -> float:
    """The staging path over rows the table already has (a spool replay, a redundant daemon)."""
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        started = time.perf_counter()
        for batch in batches:
            assert await insert_staged(conn, batch) == 0
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return sum(map(len, batches)) / elapsed


async def _round_trips(conn: asyncpg.Connection, n: int, call: Callable[..., Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await call(conn.fetchval, "SELECT 1")
    return (time.perf_counter() - started) / n * 1e6


async def _direct(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return await fn(*args)


async def asyncio_round_trip_us(url: str, n: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        return await _round_trips(conn, n, _direct)
    finally:
        await conn.close()


# -- bridges from trio ------------------------------------------------------------------------------------


async def thread_bridge(url: str, batches: list[list[Any]], calls: int) -> tuple[float, float]:
    """COPY rows/s and µs per round trip through the dedicated asyncio thread."""
    bridge = AsyncioThread("bench")
    bridge.start()
    try:
        conn = await bridge.run(asyncpg.connect, url)
        await bridge.run(init_connection, conn)
        await bridge.run(conn.execute, "TRUNCATE trades")
        started = time.perf_counter()
        for batch in batches:
            await bridge.run(copy_rows, conn, batch)
        rate = sum(map(len, batches)) / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(calls):
            await bridge.run(conn.fetchval, "SELECT 1")
        per_call = (time.perf_counter() - started) / calls * 1e6
        await bridge.run(conn.close)
    finally:
        await trio.to_thread.run_sync(bridge.stop)
    return rate, per_call


def trio_asyncio_child(url: str, rows: int, calls: int) -> None:
    """In a subprocess: the same through trio-asyncio; prints one JSON line."""
    import trio_asyncio

    batches = chunks(records(make_trades(rows)))

    async def main() -> None:
        async with trio_asyncio.open_loop():
            aio = trio_asyncio.aio_as_trio
            conn = await aio(asyncpg.connect)(url)
            await aio(init_connection)(conn)
            await aio(conn.execute)("TRUNCATE trades")
            started = time.perf_counter()
            for batch in batches:
                await aio(copy_rows)(conn, batch)
            rate = rows / (time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(calls):
                await aio(conn.fetchval)("SELECT 1")
            per_call = (time.perf_counter() - started) / calls * 1e6
            await aio(conn.close)()
        print(json.dumps({"rate": rate, "per_call_us": per_call}))

    trio.run(main)


def trio_asyncio_bridge(url: str, rows: int, calls: int) -> tuple[float, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.storage",
            "--trio-asyncio-child",
            url,
            "--rows",
            str(rows),
            "--calls",
            str(calls),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["rate"]), float(result["per_call_us"])


# -- the writer actor -----------------------------------------------------------------------------------


async def writer_run(store: Any, trades: list[Trade], spool_dir: Path) -> float:
    """Rows/s through the whole writer: bus batches of 100 as fast as it takes them, until all committed."""
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 256, Overflow.BLOCK),
        batch_max=BATCH,
        flush_interval_s=0.25,
        spool=Spool(spool_dir),
        buffer_max=1_000_000,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        started = time.perf_counter()
        for i in range(0, len(trades), BUS_BATCH):
            await bus.publish(trades[i : i + BUS_BATCH])
        bus.close()
    elapsed = time.perf_counter() - started
    assert writer.statistics().rows_written == len(trades), writer.statistics()
    return len(trades) / elapsed


async def spool_run(trades: list[Trade], spool_dir: Path) -> float:
    spool = Spool(spool_dir)
    await spool.open()
    started = time.perf_counter()
    for batch in chunks(trades):
        await spool.append(batch)
    elapsed = time.perf_counter() - started
    while await spool.peek() is not None:
        await spool.consume()
    await spool.close()
    return len(trades) / elapsed


def sqlite_raw(path: Path, trades: list[Trade]) -> float:
    """stdlib sqlite3 executemany of ready-made rows, 5000 a transaction: SQLite's own baseline."""
    rows = [
        (t.exchange, t.symbol, t.ts, t.id, str(t.price), str(t.amount), t.side, t.recv_ts) for t in trades
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("DELETE FROM trades")
    sql = (
        "INSERT INTO trades (exchange, symbol, ts, id, price, amount, side, recv_ts) VALUES (?,?,?,?,?,?,?,?)"
    )
    started = time.perf_counter()
    for batch in chunks(rows):
        conn.execute("BEGIN")
        conn.executemany(sql + " ON CONFLICT DO NOTHING", batch)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


async def truncate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE trades")
    finally:
        await conn.close()


# -- driver ---------------------------------------------------------------------------------------------


def run(url: str, n: int, repeat: int, calls: int, work: Path) -> dict[str, dict[str, float]]:
    migrate.prepare(url)
    sqlite_url = f"sqlite:///{work}/bench.db"
    migrate.prepare(sqlite_url)
    trades = make_trades(n)
    batches = chunks(records(trades))
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    def asyncpg_method(method: str) -> Callable[[], None]:
        return lambda: add(f"asyncpg {method}", asyncio.run(asyncpg_run(url, method, batches)))

    def duplicates() -> None:
        asyncio.run(asyncpg_run(url, "raw COPY (baseline)", batches))  # the rows are all there already
        add("asyncpg staging, every row a duplicate", asyncio.run(asyncpg_rerun(url, batches)))

    def round_trip() -> None:
        add("round trip: plain asyncio, µs", asyncio.run(asyncio_round_trip_us(url, calls)))

    def thread() -> None:
        rate, per_call = trio.run(thread_bridge, url, batches, calls)
        add("trio → asyncio thread (store): COPY", rate)
        add("round trip: trio → asyncio thread, µs", per_call)

    def trio_asyncio() -> None:
        rate, per_call = trio_asyncio_bridge(url, n, calls)
        add("trio → trio-asyncio: COPY", rate)
        add("round trip: trio → trio-asyncio, µs", per_call)

    def writer_pg() -> None:
        asyncio.run(truncate(url))
        add("writer → PostgreSQL", trio.run(writer_run, PostgresTradeStore(url), trades, work / "spool"))

    def sqlite_baseline() -> None:
        add("sqlite3 executemany (SQLite baseline)", sqlite_raw(work / "bench.db", trades))

    def writer_sqlite() -> None:
        sqlite3.connect(work / "bench.db").execute("DELETE FROM trades").connection.commit()
        add("writer → SQLite", trio.run(writer_run, SqliteTradeStore(sqlite_url), trades, work / "spool"))

    def spool() -> None:
        add("spool append (fsync per 5000)", trio.run(spool_run, trades, work / "spool"))

    steps = [
        *(asyncpg_method(m) for m in ASYNCPG_METHODS),
        duplicates,
        round_trip,
        thread,
        trio_asyncio,
        writer_pg,
        sqlite_baseline,
        writer_sqlite,
        spool,
    ]
    for rep in range(repeat):
        print(f"run {rep + 1}/{repeat} ...", file=sys.stderr, flush=True)
        # A different order each run, so whatever the server does in the background hits every method.
        shift = rep * len(steps) // max(repeat, 1)
        for step in steps[shift:] + steps[:shift]:
            step()
    order = [
        *(f"asyncpg {m}" for m in ASYNCPG_METHODS),
        "asyncpg staging, every row a duplicate",
        "trio → asyncio thread (store): COPY",
        "trio → trio-asyncio: COPY",
        "writer → PostgreSQL",
        "sqlite3 executemany (SQLite baseline)",
        "writer → SQLite",
        "spool append (fsync per 5000)",
        "round trip: plain asyncio, µs",
        "round trip: trio → asyncio thread, µs",
        "round trip: trio → trio-asyncio, µs",
    ]
    return {
        name: {"median": statistics.median(v), "runs": len(v), "min": min(v), "max": max(v)}
        for name in order
        for v in [samples[name]]
    }


def report(results: dict[str, dict[str, float]], n: int) -> None:
    baseline = results["asyncpg raw COPY (baseline)"]["median"]
    print(f"\n{n} trades, batches of {BATCH}; medians; ratio = rows/s ÷ raw asyncpg COPY\n")
    print(f"{'what':44} {'median':>12} {'min':>10} {'max':>10} {'ratio':>7}")
    for name, r in results.items():
        unit = "µs" if name.endswith("µs") else "rows/s"
        ratio = "" if unit == "µs" else f"{r['median'] / baseline:7.2f}"
        print(f"{name:44} {r['median']:12,.0f} {r['min']:10,.0f} {r['max']:10,.0f} {ratio:>7}  {unit}")
    writer = results["writer → PostgreSQL"]["median"] / baseline
    verdict = "meets" if writer >= 0.8 else "BELOW"
    print(f"\nwriter → PostgreSQL reaches {writer:.2f} of the raw COPY baseline ({verdict} the 0.8 target)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="round trips for the per-call figures")
    parser.add_argument("--url", help="an existing PostgreSQL database (default: a throwaway cluster)")
    parser.add_argument("--json", default="bench-results/storage.json", metavar="PATH")
    parser.add_argument("--trio-asyncio-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trio_asyncio_child:
        trio_asyncio_child(args.trio_asyncio_child, args.rows, args.calls)
        return
    cluster = None
    url = args.url
    if url is None:
        from tests.pg import start_cluster

        cluster = start_cluster(durable=True)
        url = cluster.create_database("bench")
    try:
        with tempfile.TemporaryDirectory(prefix="marketflow-bench-") as work:
            results = run(url, args.rows, args.repeat, args.calls, Path(work))
    finally:
        if cluster is not None:
            cluster.destroy()
    report(results, args.rows)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rows": args.rows, "batch": BATCH, "results": results}, f, indent=2)
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
