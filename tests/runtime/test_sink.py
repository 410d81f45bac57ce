"""RecordSink: batches, retries failed writes without losing or reordering, newer versions win by key."""

from __future__ import annotations

import logging

import pytest
import trio

from marketflow.runtime.sink import RecordSink


async def test_failed_write_is_retried_and_newer_versions_win(autojump_clock: trio.abc.Clock) -> None:
    written: list[list[tuple[str, int]]] = []
    fail = [True]

    async def write(batch: list[tuple[str, int]]) -> None:
        if fail[0]:
            fail[0] = False
            sink.submit([("a", 2)])  # a newer version arrives while the failing write is under way
            raise OSError("database is down")
        written.append(batch)

    sink: RecordSink[tuple[str, int]] = RecordSink("t", write, flush_interval_s=1.0, key=lambda r: r[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.submit([("a", 1), ("b", 1), ("b", 2)])
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert written == [[("a", 2), ("b", 2)]]
    stats = sink.statistics()
    assert (stats.errors, stats.written, stats.queued) == (1, 2, 0)


async def test_unkeyed_sink_is_bounded_and_counts_drops() -> None:
    sink: RecordSink[int] = RecordSink("t", None, capacity=3)
    sink.submit([1, 2])
    assert sink.queued == 0  # no writer: nothing is kept

    async def write(batch: list[int]) -> None: ...

    bounded: RecordSink[int] = RecordSink("t", write, capacity=3)
    bounded.submit([1, 2, 3, 4, 5])
    assert bounded.queued == 3 and bounded.statistics().dropped == 2


async def test_stop_during_a_write_loses_nothing(autojump_clock: trio.abc.Clock) -> None:
    """A stop that cancels a write in progress puts the batch back; the final flush writes it."""
    written: list[list[int]] = []
    started = trio.Event()

    async def write(batch: list[int]) -> None:
        if not written and not started.is_set():
            started.set()
            await trio.sleep(60)  # a slow write: the stop arrives in the middle of it
        written.append(batch)

    sink: RecordSink[int] = RecordSink("t", write, flush_interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.submit([1, 2, 3])
        await started.wait()
        sink.request_stop()
    assert written == [[1, 2, 3]]
    assert sink.queued == 0


async def test_outage_is_logged_once_per_minute_not_every_round(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A 10-minute database outage with a 1 s flush interval fails 600 rounds: one ERROR when it starts,
    one WARNING a minute with the count, one INFO when writes succeed again (not 600 ERRORs)."""
    caplog.set_level(logging.DEBUG, logger="marketflow.sink")
    written: list[int] = []
    down = [True]

    async def write(batch: list[int]) -> None:
        if down[0]:
            raise OSError("connection refused")
        written.extend(batch)

    sink: RecordSink[int] = RecordSink("candles", write, flush_interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.submit([1, 2, 3])
        await trio.sleep(300.5)
        sink.submit([4, 5])  # more arrive during the outage
        await trio.sleep(300)  # rounds fail at t=1, 2, ..., 600
        down[0] = False  # the round at t=601 succeeds
        await trio.sleep(5)
        nursery.cancel_scope.cancel()

    assert written == [1, 2, 3, 4, 5]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "marketflow.sink"]
    still = ("WARNING", "records still not saved")
    assert lines == [
        ("ERROR", "records not saved; retrying every round"),
        *[still] * 9,  # t=61, 121, ..., 541
        ("INFO", "records saved again"),
    ]
    first, *minutes, recovered = [r for r in caplog.records if r.name == "marketflow.sink"]
    assert first.__dict__["error"] == "OSError: connection refused"
    assert first.__dict__["queued"] == 3  # the failed batch is back in the queue
    assert [r.__dict__["failed_rounds"] for r in minutes] == [60] * 9
    assert [r.__dict__["queued"] for r in minutes] == [3] * 4 + [5] * 5  # t=301: two more arrived
    assert [r.__dict__["failed_rounds_total"] for r in minutes] == [61 + 60 * i for i in range(9)]
    assert [r.__dict__["down_s"] for r in minutes] == [60.0 * (i + 1) for i in range(9)]
    assert recovered.__dict__["down_s"] == 600.0
    assert recovered.__dict__["failed_rounds"] == 600
    assert recovered.__dict__["waiting"] == 5
    assert sink.statistics().errors == 600
    assert sink.queue.outage is None
