"""The disk spool: durable FIFO of batches; damage is detected, reported, skipped, nothing after it lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from marketflow.model import Trade
from marketflow.storage.spool import HEADER_SIZE, MAGIC, Spool, read_spool, scan_segment
from tests.storage.helpers import trades


async def drain(spool: Spool) -> list[list[Trade]]:
    out = []
    while (batch := await spool.peek()) is not None:
        out.append(batch)
        await spool.consume()
    return out


async def spooled(directory: Path, *batches: list[Trade], segment_max_bytes: int = 1 << 20) -> None:
    spool = Spool(directory, segment_max_bytes=segment_max_bytes)
    await spool.open()
    for batch in batches:
        await spool.append(batch)
    await spool.close()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


async def test_fifo_across_segments_and_restarts(tmp_path: Path) -> None:
    a, b, c, d = trades(0, 10), trades(10, 20), trades(20, 30), trades(30, 40)
    await spooled(tmp_path, a, b, c, segment_max_bytes=2000)  # roughly one record a segment
    assert len(segments(tmp_path)) >= 2
    spool = Spool(tmp_path, segment_max_bytes=2000)
    await spool.open()
    assert (spool.trades, spool.statistics().records) == (30, 3)
    assert spool.statistics().oldest_recv_ts == a[0].recv_ts
    await spool.append(d)
    assert await spool.peek() == a
    await spool.consume()
    assert await drain(spool) == [b, c, d]
    stats = spool.statistics()
    assert (stats.trades, stats.records, stats.bytes, stats.replayed_trades) == (0, 0, 0, 40)
    assert segments(tmp_path) == []  # replayed segments are deleted
    await spool.close()


async def test_prepend_goes_before_everything_spooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append(trades(20, 30))
    await spool.prepend([trades(0, 10), trades(10, 20)])
    await spool.append(trades(30, 40))
    await spool.close()
    assert read_spool(tmp_path) == [trades(0, 10), trades(10, 20), trades(20, 30), trades(30, 40)]
    reopened = Spool(tmp_path)
    await reopened.open()
    assert await drain(reopened) == [trades(0, 10), trades(10, 20), trades(20, 30), trades(30, 40)]


def corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def record_offsets(path: Path) -> list[int]:
    return [offset for offset, *_ in scan_segment(path.read_bytes())[0]]


@pytest.mark.parametrize("where", ["payload", "header"])
async def test_damaged_record_is_reported_and_skipped_and_later_records_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    await spooled(tmp_path, trades(0, 10), trades(10, 20), trades(20, 30))
    (segment,) = segments(tmp_path)
    second = record_offsets(segment)[1]
    # A flipped bit in the middle record's payload, or in its length field (the header checksum catches it).
    corrupt(segment, second + (HEADER_SIZE + 5 if where == "payload" else len(MAGIC) + 1))
    spool = Spool(tmp_path)
    with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"):
        await spool.open()
    damaged = [r for r in caplog.records if "spool record damaged" in r.getMessage()]
    assert len(damaged) == 1
    assert damaged[0].path == str(segment) and damaged[0].offset == second  # type: ignore[attr-defined]
    assert spool.statistics().corrupt_records == 1
    assert await drain(spool) == [trades(0, 10), trades(20, 30)]
    # The damaged segment is kept for inspection, not deleted with the good records.
    assert segments(tmp_path) == [] and segment.with_suffix(".corrupt").exists()


async def test_damage_found_only_at_replay_is_skipped_too(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    for batch in (trades(0, 10), trades(10, 20), trades(20, 30)):
        await spool.append(batch)
    (segment,) = segments(tmp_path)
    corrupt(segment, record_offsets(segment)[0] + HEADER_SIZE + 3)  # after it was indexed
    assert await drain(spool) == [trades(10, 20), trades(20, 30)]
    assert spool.statistics().corrupt_records == 1
    await spool.close()


async def test_torn_last_record_from_a_kill_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await spooled(tmp_path, trades(0, 10), trades(10, 20))
    (segment,) = segments(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # the second write was interrupted
    spool = Spool(tmp_path)
    with caplog.at_level(logging.ERROR, logger="marketflow.storage.spool"):
        await spool.open()
    assert any(getattr(r, "reason", "").startswith("torn record") for r in caplog.records)
    assert await drain(spool) == [trades(0, 10)]


async def test_appends_after_reopen_follow_the_old_records(tmp_path: Path) -> None:
    await spooled(tmp_path, trades(0, 5))
    await spooled(tmp_path, trades(5, 10))
    spool = Spool(tmp_path)
    await spool.open()
    assert await drain(spool) == [trades(0, 5), trades(5, 10)]
