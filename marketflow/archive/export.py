"""`marketflow export`: database tables → hive-partitioned Parquet (or CSV) files, one per partition.

For each table asked for, the database says which (exchange, symbol, day) partitions the range touches;
each is read in key order and written as one file, merged with the file a previous export left there
(`files.write_partition`), so exporting the same range again changes nothing and a wider range fills the
partition's file rather than adding another. A progress line goes to stderr on a terminal only; a summary
goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import attrs
import pyarrow as pa
import pyarrow.parquet as pq
import trio

from marketflow.archive import files
from marketflow.archive.args import add_export_arguments
from marketflow.archive.db import Partition, TableSource, row_chunks, source_for
from marketflow.archive.reader import TradeArchive
from marketflow.archive.tables import TABLES, ArchiveError, ArchiveTable, parse_tables
from marketflow.config import Config
from marketflow.progress import Progress

__all__ = ["ExportSummary", "add_export_arguments", "export_tables", "parse_bound", "run_export_command"]

TRADES = TABLES["trades"]
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@attrs.define
class TableSummary:
    partitions: int = 0
    rows: int = 0
    bytes: int = 0


@attrs.define
class ExportSummary:
    tables: dict[str, TableSummary] = attrs.Factory(dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    def lines(self, out: Path) -> list[str]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{name}: {t.rows:,} rows in {t.partitions} partition file(s), {t.bytes / 1e6:,.2f} MB"
            for name, t in self.tables.items()
        ]
        lines.append(f"exported {self.rows:,} rows to {out} in {self.seconds:.1f} s ({rate:,.0f} rows/s)")
        return lines


def parse_bound(text: str, option: str) -> int:
    """`2026-08-09`, `2026-08-09T12:00:00Z` (no zone: UTC) or epoch milliseconds → µs since the epoch."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value) * 1000
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ArchiveError(
            f"{option} must be ISO 8601 (2026-08-09 or 2026-08-09T12:00:00Z) or epoch ms, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


async def export_tables(
    source: TableSource,
    tables: Sequence[ArchiveTable],
    out: Path,
    since: int,
    until: int,
    *,
    exchange: str | None = None,
    symbol: str | None = None,
    fmt: files.Format = "parquet",
    stream: TextIO | None = None,
    archive: TradeArchive | None = None,
) -> ExportSummary:
    """Export `tables` over `[since, until)` into `out`; see the module docstring. With `archive`, trades
    of archived days are read from its files too (merged with the database's, one row per key)."""
    started = time.monotonic()
    summary = ExportSummary()
    plans = [(t, await source.partitions(t, since, until, exchange, symbol)) for t in tables]
    if archive is not None:
        plans = [(t, _with_archived(t, parts, archive, since, until, exchange, symbol)) for t, parts in plans]
    total = sum(p.rows for _, parts in plans for p in parts)
    with Progress(total, "export", unit="rows", stream=stream) as progress:
        for table, parts in plans:
            done = summary.tables.setdefault(table.name, TableSummary())
            for part in parts:
                low, high = max(since, part.start_us), min(until, part.end_us)
                chunks: list[pa.Table] = []
                async for rows in row_chunks(source, table, part.exchange, part.symbol, low, high):
                    chunks.append(await trio.to_thread.run_sync(files.arrow_rows, table, rows, fmt))
                    progress.advance(len(rows))
                new = files.concat(chunks) if chunks else files.arrow_rows(table, [], fmt)
                if archive is not None and table.name == "trades":
                    new = await trio.to_thread.run_sync(_merge_archived, archive, part, new, low, high, fmt)
                target = files.partition_file(out, table.name, part.exchange, part.symbol, part.day, fmt)
                _, size = await trio.to_thread.run_sync(files.write_partition, table, new, target, fmt)
                rows_written = new.num_rows
                done.partitions += 1
                done.rows += rows_written
                done.bytes += size
    summary.seconds = time.monotonic() - started
    return summary


def _with_archived(
    table: ArchiveTable,
    parts: list[Partition],
    archive: TradeArchive,
    since: int,
    until: int,
    exchange: str | None,
    symbol: str | None,
) -> list[Partition]:
    if table.name != "trades":
        return parts
    known = {(p.exchange, p.symbol, p.day) for p in parts}
    extra = [
        Partition(ex, sym, day, _file_rows(archive.file(ex, sym, day)))
        for ex, sym, day in archive.partitions(since, until, exchange, symbol)
        if (ex, sym, day) not in known
    ]
    return sorted(parts + extra)


def _file_rows(path: Path) -> int:
    return int(pq.read_metadata(path).num_rows)


def _merge_archived(
    archive: TradeArchive, part: Partition, new: pa.Table, since: int, until: int, fmt: files.Format
) -> pa.Table:
    if not archive.days(part.exchange, part.symbol, since, until):
        return new
    old = files.arrow_rows(TRADES, archive.rows(part.exchange, part.symbol, part.day, since, until), fmt)
    return files.merge(old, new, TRADES)


def run_export_command(args: argparse.Namespace, config: Config) -> int:
    """`marketflow export ...`: 0 done, 2 bad arguments, 1 the database or the disk failed."""
    try:
        tables = parse_tables(args.tables)
        since = parse_bound(args.since, "--since")
        until = parse_bound(args.until, "--until")
        if until <= since:
            raise ArchiveError(f"--until ({args.until}) must be after --since ({args.since})")
    except ArchiveError as exc:
        print(f"marketflow export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    exchange = args.exchange.strip().lower() if args.exchange else None
    symbol = args.symbol.strip().upper() if args.symbol else None
    out = Path(args.out)
    try:
        summary = trio.run(_export, config, tables, out, since, until, exchange, symbol, args.format)
    except (ArchiveError, OSError) as exc:
        print(f"marketflow export: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for line in summary.lines(out):
        print(line)
    return EXIT_OK


async def _export(
    config: Config,
    tables: list[ArchiveTable],
    out: Path,
    since: int,
    until: int,
    exchange: str | None,
    symbol: str | None,
    fmt: files.Format,
) -> ExportSummary:
    from marketflow.storage import open_store
    from marketflow.storage.sqlite import sqlite_path
    from marketflow.storage.writer import StorageError

    url = config.storage.url
    if url.startswith("sqlite:///") and not await trio.Path(sqlite_path(url)).exists():
        raise ArchiveError(f"no database at {sqlite_path(url)} (storage url {url})")
    store = open_store(url)
    try:
        await store.open()
    except StorageError as exc:
        raise ArchiveError(str(exc)) from exc
    try:
        from marketflow.archive import open_archive

        archive = open_archive(config)
        return await export_tables(
            source_for(store),
            tables,
            out,
            since,
            until,
            exchange=exchange,
            symbol=symbol,
            fmt=fmt,
            archive=archive,
        )
    finally:
        await store.close()
