"""RecordSink: batches, retries failed writes without losing or reordering, newer versions win by key."""

from __future__ import annotations

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
