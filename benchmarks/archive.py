"""Archive benchmark: bytes per trade (Parquet vs SQLite vs PostgreSQL) and export / read speed.

    python -m benchmarks.archive [--trades N] [--days D] [--no-postgres] [--json PATH]

N trades (default 1 000 000), BTC-like (a random walk on a 0.1 tick around 65000 written with two decimals,
8-decimal amounts, increasing integer ids), spread over D UTC days (default 5) and two symbols, are written
through the real stores into a fresh SQLite file and (unless --no-postgres) a throwaway PostgreSQL cluster
(Debian binaries, fsync on). Measured, wall time, one run each:

- bytes per trade: SQLite file after a WAL checkpoint (table + unique index + ts index), PostgreSQL
  `pg_total_relation_size('trades')` (heap + indexes + TOAST), Parquet (sum of the partition files);
- export (`marketflow export` path: read the database, write one zstd Parquet file per partition), trades/s,
  from each engine;
- reading the archive back: DuckDB aggregate over every file (`count`, `sum(amount)`), DuckDB rows into
  Python (`fetchall`), and the query layer's scan of archived days (`ArchivedReads.scan_trades`, what
  `/candles` etc. use) against the same scan from SQLite; trades/s;
- `/volume-profile` over the whole range from each (the fold the API runs over stored trades);
- the archiving job (`Archiver.run_once`, SQLite): write, verify by re-reading, delete; trades/s moved.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import trio

from marketflow.analytics.stored import stored_volume_profile
from marketflow.archive.db import source_for
from marketflow.archive.export import export_tables
from marketflow.archive.mover import Archiver
from marketflow.archive.reader import ArchivedReads, TradeArchive
from marketflow.archive.tables import TABLES
from marketflow.model import Trade
from marketflow.storage import open_store

DAY_US = 86_400_000_000
DAY0 = 20_674  # 2026-08-09
BATCH = 10_000
SYMBOLS = ("BTC-USDT", "ETH-USDT")


def batches(n: int, days: int, seed: int = 7) -> Iterator[list[Trade]]:
    """The same n trades every call, in batches, ts increasing within each symbol."""
    rng = random.Random(seed)
    per_symbol = n // len(SYMBOLS)
    step = days * DAY_US // per_symbol
    for s, symbol in enumerate(SYMBOLS):
        tick = 650_000 if s == 0 else 35_000
        out: list[Trade] = []
        for i in range(per_symbol):
            tick += rng.choice((-1, 0, 0, 1))
            ts = DAY0 * DAY_US + i * step + rng.randrange(step)
            price = Decimal(tick).scaleb(-1).quantize(Decimal("0.01"))
            amount = Decimal(rng.randrange(1, 200_000_000)).scaleb(-8)
            side = "buy" if rng.random() < 0.5 else "sell"
            out.append(Trade("bybit", symbol, str(4_000_000_000 + i), price, amount, side, ts, ts + 1500))
            if len(out) == BATCH:
                yield out
                out = []
        if out:
            yield out


async def fill(url: str, n: int, days: int) -> tuple[Any, float]:
    store = open_store(url)
    await store.open()
    started = time.perf_counter()
    for batch in batches(n, days):
        await store.write_trades(batch)
    return store, time.perf_counter() - started


def sqlite_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def parquet_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


async def scan_rate(reads: Any, days: int) -> float:
    count = 0

    def consume(rows: Sequence[Any]) -> bool:
        nonlocal count
        count += len(rows)
        return True

    started = time.perf_counter()
    for symbol in SYMBOLS:
        await reads.scan_trades("bybit", symbol, DAY0 * DAY_US, (DAY0 + days) * DAY_US, consume)
    return count / (time.perf_counter() - started)


async def measure(n: int, days: int, postgres: bool, work: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    trades = TABLES["trades"]
    since, until = DAY0 * DAY_US, (DAY0 + days) * DAY_US

    db = work / "bench.db"
    store, seconds = await fill(f"sqlite:///{db}", n, days)
    figures["sqlite write trades/s"] = n / seconds
    figures["sqlite bytes/trade"] = sqlite_bytes(db) / n
    started = time.perf_counter()
    out = work / "export-sqlite"
    summary = await export_tables(source_for(store), [trades], out, since, until)
    figures["export from sqlite trades/s"] = summary.rows / (time.perf_counter() - started)
    figures["parquet bytes/trade"] = parquet_bytes(out) / n
    figures["parquet files"] = len(list(out.rglob("*.parquet")))

    glob = f"{out}/trades/**/*.parquet"
    started = time.perf_counter()
    duckdb.sql(f"SELECT count(*), sum(amount) FROM read_parquet('{glob}')").fetchall()
    figures["duckdb aggregate trades/s"] = n / (time.perf_counter() - started)
    started = time.perf_counter()
    rows = duckdb.sql(f"SELECT ts, id, price, amount, side FROM read_parquet('{glob}')").fetchall()
    figures["duckdb rows to python trades/s"] = len(rows) / (time.perf_counter() - started)
    del rows
    figures["query scan, sqlite trades/s"] = await scan_rate(store, days)
    archived = ArchivedReads(store, TradeArchive(out))
    figures["query scan, archive trades/s"] = await scan_rate(archived, days)
    for name, reads in (("sqlite", store), ("archive", archived)):
        started = time.perf_counter()
        for symbol in SYMBOLS:
            await stored_volume_profile(
                reads, None, "bybit", symbol, since, until, bin=Decimal(10), value_area=Decimal("0.7")
            )
        figures[f"/volume-profile, {name} trades/s"] = n / (time.perf_counter() - started)

    archive = work / "archive"
    started = time.perf_counter()
    result = await Archiver(store, archive, 1, clock=lambda: until + DAY_US).run_once()
    figures["archive job (sqlite) trades/s"] = result.trades / (time.perf_counter() - started)
    await store.close()

    if postgres:
        from marketflow.bench.pgcluster import PgCluster

        with PgCluster(durable=True) as cluster:
            url = cluster.create_database("archive_bench")
            store, seconds = await fill(url, n, days)
            figures["postgres write trades/s"] = n / seconds
            size = await store.fetch("SELECT pg_total_relation_size('trades')", [])
            figures["postgres bytes/trade"] = int(size[0][0]) / n
            started = time.perf_counter()
            summary = await export_tables(source_for(store), [trades], work / "export-pg", since, until)
            figures["export from postgres trades/s"] = summary.rows / (time.perf_counter() - started)
            await store.close()
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="marketflow-archive-bench-") as work:
        figures = trio.run(measure, args.trades, args.days, not args.no_postgres, Path(work))
    print(f"archive benchmark: {args.trades:,} trades over {args.days} days, {len(SYMBOLS)} symbols")
    for name, value in figures.items():
        print(f"  {name:34s} {value:>14,.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
