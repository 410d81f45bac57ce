"""The spool under faults: a full disk, records torn in the middle of a segment, a segment that will not go.

Full-disk tests run on a real full file system (`full_disk.py`): a small tmpfs where one can be mounted,
and always under RLIMIT_FSIZE in a child process.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from marketflow.model import Trade
from marketflow.storage.spool import HEADER_SIZE, Spool, SpoolError, encode_record, read_spool, scan_segment
from tests.storage.full_disk import run_full_disk, small_tmpfs, tmpfs_mountable
from tests.storage.helpers import trades

CAPACITY = 2 * 4096
KINDS = [
    pytest.param(
        "tmpfs", marks=pytest.mark.skipif(not tmpfs_mountable(), reason="mounting a tmpfs needs root")
    ),
    "rlimit",
]


async def drain(spool: Spool) -> list[list[Trade]]:
    out = []
    while (batch := await spool.peek()) is not None:
        out.append(batch)
        await spool.consume()
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


async def fill_then_make_room(spool_dir: Path, work: Path, make_room: Callable[[], None]) -> None:
    """Append until the disk is full: the failed record leaves no trace; with room again, nothing is lost."""
    spool = Spool(spool_dir)
    await spool.open()
    kept: list[list[Trade]] = []
    for i in range(1000):
        batch = trades(10 * i, 10 * i + 10)
        # The failing write must be cut short in the middle of a record, not refused at its start.
        cut_short = spool.statistics().bytes < CAPACITY < spool.statistics().bytes + len(encode_record(batch))
        try:
            await spool.append(batch)
        except SpoolError as exc:
            assert exc.disk_full, exc
            assert cut_short
            break
        kept.append(batch)
    else:
        raise AssertionError("the disk never filled up")
    (segment,) = segments(spool_dir)
    stats = spool.statistics()
    # Cut back to the last good record; counted as an error, not as spooled.
    assert segment.stat().st_size == stats.bytes < CAPACITY
    assert (stats.records, stats.appended_trades, stats.write_errors) == (len(kept), 10 * len(kept), 1)
    with pytest.raises(SpoolError):  # still full
        await spool.append(batch)
    assert segment.stat().st_size == spool.statistics().bytes and spool.statistics().write_errors == 2

    make_room()
    later = trades(100_000, 100_005)
    await spool.append(batch)
    await spool.append(later)
    kept += [batch, later]
    assert read_spool(spool_dir) == kept  # what a restart would find
    assert await drain(spool) == kept  # what this run's index points at
    await spool.close()
    assert segments(spool_dir) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_cut_short_by_a_full_disk_is_cut_off_and_nothing_after_it_is_lost(
    kind: str, tmp_path: Path
) -> None:
    run_full_disk(kind, fill_then_make_room, tmp_path, CAPACITY)


async def prepend_on_a_full_disk(spool_dir: Path, work: Path, make_room: Callable[[], None]) -> None:
    """A prepend that does not fit leaves nothing behind (the caller still holds its batches)."""
    spool = Spool(spool_dir)
    await spool.open()
    await spool.append(trades(10_000, 10_010))
    big = [trades(i, i + 50) for i in range(0, 200, 50)]  # more than the disk has left, in one segment
    with pytest.raises(SpoolError) as caught:
        await spool.prepend(big)
    assert caught.value.disk_full
    assert len(segments(spool_dir)) == 1 and read_spool(spool_dir) == [trades(10_000, 10_010)]
    assert (spool.statistics().records, spool.statistics().write_errors) == (1, 1)
    make_room()
    await spool.prepend(big)
    assert read_spool(spool_dir) == [*big, trades(10_000, 10_010)]
    assert await drain(spool) == [*big, trades(10_000, 10_010)]
    await spool.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_prepend_that_does_not_fit_leaves_nothing_behind(kind: str, tmp_path: Path) -> None:
    run_full_disk(kind, prepend_on_a_full_disk, tmp_path, CAPACITY)


async def test_put_back_batches_come_out_in_the_order_given_within_one_run(tmp_path: Path) -> None:
    """The index is what this run replays from (not a rescan): prepended batches keep their order in it."""
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append(trades(30, 40))
    await spool.prepend([trades(10, 20), trades(20, 30)])
    await spool.prepend([trades(0, 5), trades(5, 10)])
    assert await drain(spool) == [trades(0, 5), trades(5, 10), trades(10, 20), trades(20, 30), trades(30, 40)]
    await spool.close()


def torn(data: bytes, offset: int, keep: int) -> bytes:
    """`data` with the record at `offset` cut after `keep` bytes, as a write stopped by a full disk leaves it
    when the next record is written after it."""
    (length,) = [length for off, length, *_ in scan_segment(data)[0] if off == offset]
    return data[: offset + keep] + data[offset + HEADER_SIZE + length :]


@pytest.mark.parametrize(
    ("torn_batch", "keep", "reason"),
    [
        # A whole header over a partial payload, with more than its length of good records after it.
        (trades(10, 20), HEADER_SIZE + 40, "record cut short"),
        # A header claiming more than the rest of the file holds, good records after it all the same.
        (trades(10, 400), HEADER_SIZE + 40, "record cut short"),
        # Part of a header.
        (trades(10, 20), 11, "damaged record header"),
    ],
    ids=["payload", "long-payload", "header"],
)
async def test_a_torn_record_in_the_middle_loses_none_of_the_good_records_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, torn_batch: list[Trade], keep: int, reason: str
) -> None:
    good = [trades(0, 10), trades(1000, 1010), trades(1010, 1020), trades(1020, 1030), trades(1030, 1500)]
    spool = Spool(tmp_path)
    await spool.open()
    for batch in (good[0], torn_batch, *good[1:]):
        await spool.append(batch)
    await spool.close()
    (segment,) = segments(tmp_path)
    data = segment.read_bytes()
    second = scan_segment(data)[0][1][0]
    segment.write_bytes(torn(data, second, keep))

    reopened = Spool(tmp_path)
    with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"):
        await reopened.open()
    reports = [r for r in caplog.records if "spool record damaged" in r.getMessage()]
    assert [(r.offset, r.skipped_bytes, r.reason) for r in reports] == [  # type: ignore[attr-defined]
        (second, keep, reason)
    ]
    assert await drain(reopened) == good
    assert segments(tmp_path) == [] and segment.with_suffix(".corrupt").exists()


async def test_a_replayed_segment_that_cannot_be_removed_is_reported_and_removed_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its trades are in the database: nothing is lost, so replay goes on (no crash) and it is retried."""
    spool = Spool(tmp_path, segment_max_bytes=1500)  # one record a segment
    await spool.open()
    for start in (0, 10, 20):
        await spool.append(trades(start, start + 10))
    first, second, third = segments(tmp_path)
    assert await spool.peek() == trades(0, 10)
    # Something in the way: the name now holds a directory that is not empty, so removing it fails.
    first.rename(tmp_path / "moved")
    first.mkdir()
    (first / "in-the-way").touch()
    with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"):
        await spool.consume()
    (report,) = [r for r in caplog.records if "cannot remove a replayed spool segment" in r.getMessage()]
    assert report.path == str(first) and "IsADirectoryError" in report.error  # type: ignore[attr-defined]
    assert spool.statistics().remove_errors == 1 and spool.statistics().records == 2
    # New segments never take its number, replay goes on.
    await spool.append(trades(30, 40))
    assert await spool.peek() == trades(10, 20)
    await spool.consume()
    assert spool.statistics().remove_errors == 2 and not second.exists()  # tried again, still in the way
    (first / "in-the-way").unlink()
    first.rmdir()
    assert await drain(spool) == [trades(20, 30), trades(30, 40)]
    assert spool.statistics().remove_errors == 2 and segments(tmp_path) == []
    assert not third.exists()
    await spool.close()


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True)


@pytest.mark.skipif(
    not tmpfs_mountable() or shutil.which("chattr") is None, reason="needs root (tmpfs, chattr)"
)
async def test_a_segment_that_cannot_be_cut_back_is_left_for_a_new_one_and_removed_when_it_can_be(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An append-only segment (`chattr +a`) on a full disk: the torn write cannot be truncated away, so the
    next record starts a new segment; the reader skips the torn bytes; the segment goes once it may."""
    with small_tmpfs(tmp_path / "disk", CAPACITY) as (disk, make_room):
        spool_dir = disk / "spool"
        spool = Spool(spool_dir)
        await spool.open()
        kept = [trades(0, 10)]
        await spool.append(kept[0])
        (first,) = segments(spool_dir)
        chattr("+a", first)
        try:
            with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"):
                for i in range(1, 1000):
                    batch = trades(10 * i, 10 * i + 10)
                    try:
                        await spool.append(batch)
                    except SpoolError:
                        break
                    kept.append(batch)
            assert any("continuing in a new segment" in r.getMessage() for r in caplog.records)
            assert first.stat().st_size > spool.statistics().bytes  # the torn bytes are still there
            make_room()
            await spool.append(batch)
            kept.append(batch)
            assert segments(spool_dir) == [first, spool_dir / f"{int(first.stem) + 1:020d}.spool"]
            assert read_spool(spool_dir) == kept  # a restart skips the torn bytes, keeps the rest
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"):
                assert await drain(spool) == kept
            # Append-only files cannot be removed either: reported, counted, tried again at the next
            # segment's retirement (in vain here too), replay unharmed.
            assert [(r.getMessage(), r.path) for r in caplog.records] == 2 * [  # type: ignore[attr-defined]
                ("cannot remove a replayed spool segment; trying again later", str(first))
            ]
            assert spool.statistics().remove_errors == 2 and first.exists()
        finally:
            chattr("-a", first)
        await spool.append(trades(5000, 5010))
        assert await drain(spool) == [trades(5000, 5010)]
        assert segments(spool_dir) == [] and spool.statistics().remove_errors == 2
        await spool.close()
