"""The archiving job (`[archive] after_days = N`): moves whole days of trades older than N days from the
database into the archive's Parquet files, soon after start and then daily.

One partition (exchange, symbol, day) at a time, in an order that makes every interruption safe:

1. read the day's trades from the database (key order, in pages, into Arrow) and their checksum;
2. unless the partition's file already holds exactly those rows (a resumed run), write the file merged
   with what it held, through a temporary file, fsync, rename, fsync of the directory (`files.py`);
3. verify: re-read from the file the rows with the day's keys — their count and checksum must equal the
   database's, else stop here (nothing deleted);
4. delete exactly those keys from the database, in transactions of 20 000 keys (one statement each on
   PostgreSQL), each key verified in the file already; rows that arrived meanwhile stay for the next run.

Killed before 2's rename: the old file (or none) and every row in the database; the temporary file is
removed by the next write. Killed after the rename: the rows are in both places (queries merge them, one
row per key) and the next run finds them in the file, skips the write and deletes. Killed during 4: a
deleted key is in the file, a kept one is deleted next time. A full disk fails step 2: nothing deleted,
the old file intact; the job retries after `retry_s`. So nothing is lost and, once a run completes,
nothing is in two places. Late trades for an archived day (a backfill) are merged into its file by the
next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import pyarrow as pa
import trio

from marketflow.archive import files
from marketflow.archive.db import DAY_US, Partition, TableSource, row_chunks, source_for
from marketflow.archive.tables import TABLES, ArchiveError
from marketflow.model import now_us

__all__ = ["ArchiveRun", "Archiver", "ArchiverStatistics", "PartitionMove", "archive_partition"]

log = logging.getLogger("marketflow.archive")

TRADES = TABLES["trades"]
DELETE_KEYS = 100_000


def _no_step(step: str) -> None:
    return None


@attrs.frozen
class PartitionMove:
    """What archiving one partition did: trades deleted from the database, and the file it wrote (bytes;
    None when the file already held the day's trades, a resumed run)."""

    trades: int
    file_bytes: int | None


async def archive_partition(
    source: TableSource, root: Path, part: Partition, step: Callable[[str], None] = _no_step
) -> PartitionMove:
    """Move one day of one market's trades into the archive (see the module docstring). `step` is called
    at each stage (tests kill the process there)."""
    digest = files.Checksum(part.exchange, part.symbol)
    parts: list[pa.Table] = []
    async for rows in row_chunks(source, TRADES, part.exchange, part.symbol, part.start_us, part.end_us):
        digest.update(rows)
        parts.append(await trio.to_thread.run_sync(files.to_arrow, TRADES, rows))
    if not parts:
        return PartitionMove(0, None)
    step("read")
    count, expected = digest.count, digest.hexdigest()
    new = files.concat(parts)
    del parts
    keys = pa.table({"ts": new["ts"].cast(pa.int64()), "id": new["id"]})
    target = files.partition_file(root, TRADES.name, part.exchange, part.symbol, part.day, "parquet")

    def write_and_verify() -> int | None:
        size = None
        if not (target.exists() and _holds(target, part, keys, count, expected)):
            _, size = files.write_partition(
                TRADES, new, target, "parquet", before_rename=lambda: step("temp_written")
            )
        step("renamed")
        if not _holds(target, part, keys, count, expected):
            raise ArchiveError(
                f"{target}: the file read back does not hold the {count} trades written (count or "
                "checksum differ); nothing was deleted"
            )
        return size

    file_bytes = await trio.to_thread.run_sync(write_and_verify)
    step("verified")
    deleted = 0
    slice_keys = DELETE_KEYS
    for start in range(0, count, slice_keys):  # verified keys, a slice at a time (memory: one slice)
        chunk = keys.slice(start, slice_keys)
        pairs = list(zip(chunk["ts"].to_pylist(), chunk["id"].to_pylist(), strict=True))
        deleted += await source.delete_trades(part.exchange, part.symbol, pairs)
        step("deleted_slice")
    step("deleted")
    return PartitionMove(deleted, file_bytes)


def _holds(target: Path, part: Partition, keys: pa.Table, count: int, digest: str) -> bool:
    got = files.matching_checksum(TRADES, target, part.exchange, part.symbol, keys)
    return got == (count, digest)


@attrs.frozen
class ArchiveRun:
    partitions: int
    trades: int
    failed: int


@attrs.frozen
class ArchiverStatistics:
    name: str
    state: str
    after_days: int
    dir: str
    runs: int
    partitions: int
    trades_moved: int
    errors: int
    last_error: str | None
    last_run_us: int | None
    next_run_in_s: float | None
    failing: bool = False  # the last pass left a partition in the database (disk full, database down)
    last_success_us: int | None = None  # end of the last pass that failed nowhere
    files_written: int = 0  # partition files (re)written
    bytes_written: int = 0  # their sizes
    failed_runs: int = 0  # passes that left a partition in the database


class Archiver:
    """The archiving job as an actor. `first_delay_s` after start (letting the writer open the store),
    then every `interval_s`; after a failed partition, again after `retry_s`."""

    def __init__(
        self,
        store: object,
        root: Path,
        after_days: int,
        *,
        first_delay_s: float = 60.0,
        interval_s: float = 86_400.0,
        retry_s: float = 600.0,
        clock: Callable[[], int] = now_us,
        step: Callable[[str], None] = _no_step,
        name: str = "archive",
    ) -> None:
        if after_days < 1:
            raise ValueError(f"after_days must be >= 1, got {after_days}")
        self.name = name
        self._store = store
        self.root = root
        self.after_days = after_days
        self._first_delay_s = first_delay_s
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._clock = clock
        self._step = step
        self._state = "waiting"
        self._runs = 0
        self._partitions = 0
        self._trades = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_run: int | None = None
        self._last_success: int | None = None
        self._files = 0
        self._bytes = 0
        self._failed_runs = 0
        self._next_at: float | None = None
        self._logged_error_at = float("-inf")
        self.failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = self._first_delay_s
        while True:
            self._next_at = trio.current_time() + delay
            self._state = "waiting"
            await trio.sleep(delay)
            self._next_at = None
            result = await self.run_once()
            delay = self._retry_s if result.failed else self._interval_s

    def cutoff_us(self) -> int:
        """Trades before this instant (a UTC midnight) are archived: whole days older than after_days."""
        edge = self._clock() - self.after_days * DAY_US
        return edge - edge % DAY_US

    async def run_once(self) -> ArchiveRun:
        """Archive every whole day older than `after_days`, partition by partition."""
        self._state = "archiving"
        self._runs += 1
        moved = done = failed = 0
        try:
            source = source_for(self._store)
            parts = await source.partitions(TRADES, 0, self.cutoff_us(), None, None)
        except Exception as exc:  # the database is down: try again later
            self._failed("listing the days to archive", exc)
            self.failing = True
            self._failed_runs += 1
            self._state = "idle"
            return ArchiveRun(0, 0, 1)
        for part in parts:
            try:
                move = await archive_partition(source, self.root, part, self._step)
                moved += move.trades
                done += 1
                if move.file_bytes is not None:
                    self._files += 1
                    self._bytes += move.file_bytes
            except Exception as exc:  # one partition's failure (disk full, database) must not stop the rest
                failed += 1
                self._failed(f"archiving {part.exchange} {part.symbol} {files.day_of(part.day)}", exc)
        self._partitions += done
        self._trades += moved
        self._last_run = self._clock()
        if done:
            log.info(
                "archived %d trades of %d partition(s) into %s",
                moved,
                done,
                self.root,
                extra={"trades": moved, "partitions": done},
            )
        self._state = "idle"
        self.failing = failed > 0
        if failed:
            self._failed_runs += 1
        else:
            self._last_success = self._last_run
        return ArchiveRun(done, moved, failed)

    def _failed(self, doing: str, exc: Exception) -> None:
        self._errors += 1
        self._last_error = f"{doing}: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._logged_error_at >= 60.0:  # a full disk fails every partition: one line a minute
            self._logged_error_at = now
            log.error("archive: %s (rows stay in the database)", self._last_error)

    def statistics(self) -> ArchiverStatistics:
        next_in = None if self._next_at is None else max(0.0, self._next_at - trio.current_time())
        return ArchiverStatistics(
            self.name,
            self._state,
            self.after_days,
            str(self.root),
            self._runs,
            self._partitions,
            self._trades,
            self._errors,
            self._last_error,
            self._last_run,
            next_in,
            self.failing,
            self._last_success,
            self._files,
            self._bytes,
            self._failed_runs,
        )
