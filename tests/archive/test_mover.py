"""The archiving job: verified moves; SIGKILL at any step and a full disk lose nothing, duplicate nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import trio

from marketflow.archive.db import source_for
from marketflow.archive.export import export_tables
from marketflow.archive.mover import Archiver, ArchiveRun
from marketflow.archive.reader import TradeArchive
from marketflow.archive.tables import TABLES
from marketflow.config import parse_config
from marketflow.daemon import Daemon
from marketflow.model import Trade
from marketflow.storage.writer import TradeStore
from tests.archive.helpers import BASE, DAY_US, all_rows, filled_store, make_trades, text_row
from tests.archive.test_export import duckdb_rows

NOW = BASE + 3 * DAY_US + 5_000_000  # day 3, so with after_days = 1 days 0 and 1 are archived
ROOT = Path(__file__).resolve().parents[2]


def archived(root: Path) -> list[tuple[object, ...]]:
    return duckdb_rows(root) if list(root.rglob("*.parquet")) else []


def older(trades: list[Trade], days: int) -> list[tuple[object, ...]]:
    return sorted(text_row(t) for t in trades if t.ts < BASE + days * DAY_US)


async def assert_nothing_lost(store: TradeStore, root: Path, trades: list[Trade]) -> None:
    """Every trade is in the database or the archive, exactly as written (it may be in both)."""
    db, arch = await all_rows(store), archived(root)
    assert sorted(set(db) | set(arch)) == sorted(text_row(t) for t in trades)
    assert len(set(arch)) == len(arch)  # no row twice within the archive


async def assert_moved(store: TradeStore, root: Path, trades: list[Trade]) -> None:
    """Days 0 and 1 only in the archive, day 2 only in the database: no duplicate anywhere."""
    assert archived(root) == older(trades, 2)
    assert await all_rows(store) == sorted(text_row(t) for t in trades if t.ts >= BASE + 2 * DAY_US)
    assert not _temporaries(root)


def _temporaries(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


def _sh(*args: str) -> None:
    subprocess.run(list(args), check=False, capture_output=True)


def _kill_when_first_file_appears(cmd: list[str], root: Path) -> None:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(root.rglob("data.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def test_archiving_moves_whole_old_days_exactly(store_url: str, tmp_path: Path) -> None:
    trades = make_trades()
    store = await filled_store(store_url, trades)
    root = tmp_path / "archive"
    try:
        archiver = Archiver(store, root, 1, clock=lambda: NOW)
        assert archiver.cutoff_us() == BASE + 2 * DAY_US
        result = await archiver.run_once()
        assert (result.partitions, result.trades, result.failed) == (8, len(older(trades, 2)), 0)
        await assert_moved(store, root, trades)
        again = await archiver.run_once()  # idempotent: nothing left to move
        assert (again.partitions, again.trades) == (0, 0)
        await assert_moved(store, root, trades)
        # A late trade for an archived day (a backfill) is merged into that day's file by the next run.
        late = Trade(
            "bybit", "BTC-USDT", "late-1", trades[0].price, trades[0].amount, "buy", BASE + 7, BASE + 8
        )
        await store.write_trades([late])
        assert (await archiver.run_once()).trades == 1
        await assert_moved(store, root, [*trades, late])
        stats = archiver.statistics()
        assert (stats.runs, stats.partitions, stats.errors) == (3, 9, 0)
        # `marketflow export` over archived and stored days gives every trade once.
        out = tmp_path / "export"
        summary = await export_tables(
            source_for(store), [TABLES["trades"]], out, BASE, BASE + 3 * DAY_US, archive=TradeArchive(root)
        )
        assert duckdb_rows(out) == sorted(text_row(t) for t in [*trades, late])
        assert summary.rows == len(trades) + 1 and summary.tables["trades"].partitions == 12
    finally:
        await store.close()


def _child(url: str, root: Path, step: str, nth: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.archive.kill_child", url, str(root), str(NOW), step, str(nth), "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("step", "nth"),
    [
        ("read", 1),
        ("temp_written", 1),
        ("renamed", 1),
        ("verified", 1),
        ("deleted", 1),
        ("temp_written", 3),
        ("verified", 5),
        ("deleted_slice", 1),  # between two delete transactions of one partition
        ("deleted_slice", 9),
    ],
)
async def test_sigkill_at_any_step_loses_nothing_and_resumes_without_duplicates(
    store_url: str, tmp_path: Path, step: str, nth: int
) -> None:
    trades = make_trades()
    store = await filled_store(store_url, trades)
    root = tmp_path / "archive"
    try:
        child = await trio.to_thread.run_sync(_child, store_url, root, step, nth)
        assert child.returncode == -signal.SIGKILL, child.stderr
        await assert_nothing_lost(store, root, trades)
        if step == "temp_written":
            assert _temporaries(root)  # the kill left a temporary file...
        result = await Archiver(store, root, 1, clock=lambda: NOW).run_once()
        assert result.failed == 0
        await assert_moved(store, root, trades)  # ...the resumed run removed it; no row twice
    finally:
        await store.close()


async def test_sigkill_from_outside_mid_job(tmp_path: Path) -> None:
    """A kill at an arbitrary moment: the parent kills the child as soon as the first file appears."""
    url = f"sqlite:///{tmp_path}/store.db"
    trades = make_trades(days=3, per_day=3000, symbols=("BTC-USDT", "ETH-USDT", "SOL-USDT"))
    store = await filled_store(url, trades)
    root = tmp_path / "archive"
    try:
        cmd = [sys.executable, "-m", "tests.archive.kill_child", url, str(root), str(NOW), "never", "1"]
        await trio.to_thread.run_sync(_kill_when_first_file_appears, cmd, root)
        await assert_nothing_lost(store, root, trades)
        await Archiver(store, root, 1, clock=lambda: NOW).run_once()
        await assert_moved(store, root, trades)
    finally:
        await store.close()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
async def test_full_disk_loses_nothing_and_resumes(store_url: str, tmp_path: Path) -> None:
    trades = make_trades(days=3, per_day=1500)
    store = await filled_store(store_url, trades)
    root = tmp_path / "archive"
    if not _mount_tmpfs(root, "40k"):
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        archiver = Archiver(store, root, 1, clock=lambda: NOW)
        result = await archiver.run_once()
        assert result.failed > 0  # the disk filled up after some partitions (or at the first)
        stats = archiver.statistics()
        assert stats.errors == result.failed and "No space left on device" in (stats.last_error or "")
        await assert_nothing_lost(store, root, trades)
        assert not _temporaries(root)  # a failed write leaves no temporary file behind
        assert stats.failing  # the daemon reports it: health "degraded", problem "archive"
        daemon = Daemon(parse_config(f'[daemon]\nstate_dir = "{tmp_path}"\n', env={}))
        daemon.actors["archive"] = archiver
        assert "No space left on device" in daemon.health().problems["archive"]
        _sh("mount", "-o", "remount,size=64m", str(root))
        again = await archiver.run_once()
        assert again.failed == 0 and again.partitions == 8 - result.partitions
        assert not archiver.statistics().failing
        await assert_moved(store, root, trades)
    finally:
        await store.close()
        _sh("umount", "-l", str(root))  # lazy: an open file must not leave the mount behind


async def test_archived_rows_never_deleted_when_the_file_does_not_verify(tmp_path: Path) -> None:
    """A file that reads back different (here: a row of it changed underneath) stops the delete."""
    url = f"sqlite:///{tmp_path}/store.db"
    trades = make_trades(days=3, per_day=5)
    store = await filled_store(url, trades)
    root = tmp_path / "archive"
    try:
        seen: list[str] = []

        def corrupt(step: str) -> None:
            seen.append(step)
            if step == "renamed" and seen.count("renamed") == 1:
                target = next(root.rglob("data.parquet"))
                duckdb.sql(
                    f"COPY (SELECT * REPLACE (CAST(price + 1 AS DECIMAL(38, 18)) AS price) FROM "
                    f"read_parquet('{target}')) TO '{target}' (FORMAT parquet)"
                )

        result = await Archiver(store, root, 1, clock=lambda: NOW, step=corrupt).run_once()
        assert result.failed == 1 and result.partitions == 7
        kept = [t for t in trades if t.ts >= BASE + 2 * DAY_US]
        unverified = [
            t for t in trades if t.ts < BASE + DAY_US and (t.exchange, t.symbol) == ("binance", "BTC-USDT")
        ]
        assert await all_rows(store) == sorted(text_row(t) for t in kept + unverified)
    finally:
        await store.close()


async def test_job_runs_soon_after_start_then_daily_and_retries_a_failure_sooner(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Virtual time: the first pass 60 s after start, the next a day later; after a failed pass, 600 s.
    (The passes' work is replaced by recording the time: a worker thread would let the clock jump.)"""
    archiver = Archiver(object(), tmp_path / "archive", 1, clock=lambda: NOW)
    outcomes = iter([ArchiveRun(8, 100, 0), ArchiveRun(7, 90, 1), ArchiveRun(1, 10, 0)])
    runs: list[float] = []
    done = trio.Event()

    async def timed() -> ArchiveRun:
        runs.append(trio.current_time())
        if len(runs) == 4:
            done.set()
        return next(outcomes, ArchiveRun(0, 0, 0))

    archiver.run_once = timed  # type: ignore[method-assign]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(archiver.run)
        assert archiver.statistics().next_run_in_s == 60.0
        await done.wait()
        nursery.cancel_scope.cancel()
    assert [r - start for r in runs] == [60.0, 86_460.0, 87_060.0, 173_460.0]


def test_archive_config_and_the_daemon_child(tmp_path: Path) -> None:
    from marketflow.archive import archive_root
    from marketflow.config import ConfigError, parse_config
    from marketflow.daemon import Daemon

    config = parse_config(f'[daemon]\nstate_dir = "{tmp_path}"\n[archive]\nafter_days = 30\n', env={})
    assert config.archive.after_days == 30 and archive_root(config) == tmp_path / "archive"
    daemon = Daemon(config)
    child = next(c for c in daemon._children() if c.name == "archive")
    first, second = child.build(), child.build()
    assert isinstance(first, Archiver) and first is not second  # a fresh actor for every (re)start
    assert first.after_days == 30 and first.root == tmp_path / "archive"
    names = [c.name for c in daemon._children()]
    assert names.index("storage") < names.index("archive")  # stopped before the store closes
    off = Daemon(parse_config(f'[daemon]\nstate_dir = "{tmp_path}"\n', env={}))
    assert "archive" not in [c.name for c in off._children()] and off.config.archive.after_days == 0
    with pytest.raises(ConfigError, match=r"archive.after_days: must be below storage.retention_days \(7\)"):
        parse_config("[storage]\nretention_days = 7\n[archive]\nafter_days = 7\n", env={})
    with pytest.raises(ConfigError, match=r"archive.after_days: must be an integer"):
        parse_config('[archive]\nafter_days = "soon"\n', env={})
    with pytest.raises(ConfigError, match=r"archive.every: unknown key"):
        parse_config("[archive]\nevery = 1\n", env={})


async def test_paged_reads_and_deletes_move_every_trade_once(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database pages of 7 rows (keyset on (ts, id): pairs of trades share a ts, so pages split ties),
    deletes of 5 keys per transaction and 11 per slice: export and archive still hold every trade once."""
    from marketflow.archive import db, mover

    monkeypatch.setattr(db, "READ_CHUNK", 7)
    monkeypatch.setattr(db, "DELETE_CHUNK", 5)
    monkeypatch.setattr(mover, "DELETE_KEYS", 11)
    trades = make_trades(days=3, per_day=30)
    store = await filled_store(store_url, trades)
    root = tmp_path / "archive"
    try:
        out = tmp_path / "export"
        summary = await export_tables(source_for(store), [TABLES["trades"]], out, BASE, BASE + 3 * DAY_US)
        assert summary.rows == len(trades) and duckdb_rows(out) == sorted(text_row(t) for t in trades)
        result = await Archiver(store, root, 1, clock=lambda: NOW).run_once()
        assert result.trades == len(older(trades, 2)) and not result.failed
        await assert_moved(store, root, trades)
    finally:
        await store.close()
