from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec

import pytest
import trio
import trio.testing

from marketflow.runtime import Bus, Overflow, SubscriberStatistics, receive_batches

P = ParamSpec("P")


def time_boxed(seconds: float) -> Callable[[Callable[P, Awaitable[None]]], Callable[P, Awaitable[None]]]:
    """Fail a test that would hang: ``trio.fail_after(seconds)`` around the whole body.

    Under ``autojump_clock`` the seconds are virtual, so a deadlock fails at once.
    """

    def decorate(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
        @functools.wraps(test)
        async def boxed(*args: P.args, **kwargs: P.kwargs) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return boxed

    return decorate


def drain(receiver: trio.MemoryReceiveChannel[list[int]]) -> list[list[int]]:
    batches = []
    while True:
        try:
            batches.append(receiver.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return batches


@time_boxed(5)
async def test_fan_out_to_every_subscriber() -> None:
    bus = Bus[int]("trades")
    subs = [bus.subscribe(name, capacity=10) for name in ("storage", "view", "analytics")]
    receivers = [sub.receiver() for sub in subs]

    with trio.fail_after(1):
        await bus.publish([1, 2])
        await bus.publish([])
        await bus.publish([3])

    for receiver in receivers:
        assert drain(receiver) == [[1, 2], [3]]
    stats = bus.statistics()
    assert (stats.name, stats.published_batches, stats.published_items) == ("trades", 2, 3)
    assert [s.delivered_batches for s in stats.subscribers] == [2, 2, 2]


@time_boxed(1000)
async def test_block_subscriber_makes_the_publisher_wait(autojump_clock: trio.abc.Clock) -> None:
    bus = Bus[int]("raw")
    receiver = bus.subscribe("normalizer", capacity=2).receiver()
    returned: list[float] = []

    async def publisher() -> None:
        for n in range(3):
            await bus.publish([n])
            returned.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.sleep(5)
        assert returned == [0.0, 0.0]
        assert bus.statistics().subscribers[0].queued_batches == 2
        assert await receiver.receive() == [0]
        await trio.sleep(1)

    assert returned == [0.0, 0.0, 5.0]
    assert drain(receiver) == [[1], [2]]


@time_boxed(1000)
async def test_drop_oldest_never_waits_and_counts_drops(autojump_clock: trio.abc.Clock) -> None:
    bus = Bus[int]("trades")
    storage = bus.subscribe("storage", capacity=10)
    view = bus.subscribe("view", capacity=2, overflow=Overflow.DROP_OLDEST)
    view_rx = view.receiver()

    await bus.publish([1])
    await bus.publish([2, 2])
    await bus.publish([3, 3, 3])
    await bus.publish([4])
    assert trio.current_time() == 0.0

    assert drain(view_rx) == [[3, 3, 3], [4]]
    assert drain(storage.receiver()) == [[1], [2, 2], [3, 3, 3], [4]]
    assert bus.statistics().subscribers == (
        SubscriberStatistics("storage", Overflow.BLOCK, 10, 0, 4, 0, 0),
        SubscriberStatistics("view", Overflow.DROP_OLDEST, 2, 0, 2, 2, 3),
    )


@time_boxed(5)
async def test_drop_oldest_hands_straight_to_a_waiting_receiver() -> None:
    bus = Bus[int]("trades")
    receiver = bus.subscribe("view", capacity=1, overflow=Overflow.DROP_OLDEST).receiver()
    got: list[list[int]] = []

    async def consume() -> None:
        got.append(await receiver.receive())

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            await bus.publish([1])
            await bus.publish([2])

    assert got == [[1]]
    assert drain(receiver) == [[2]]
    assert bus.statistics().subscribers[0].dropped_batches == 0


@time_boxed(5)
async def test_close_lets_subscribers_drain_then_end() -> None:
    bus = Bus[int]("trades")
    sub = bus.subscribe("storage", capacity=10)
    receiver = sub.receiver()
    await bus.publish([1])
    await bus.publish([2])

    bus.close()
    bus.close()  # idempotent

    assert bus.closed
    with trio.fail_after(1):
        assert await receiver.receive() == [1]
        assert await receiver.receive() == [2]
        with pytest.raises(trio.EndOfChannel):
            await receiver.receive()
    with pytest.raises(trio.ClosedResourceError):
        await bus.publish([3])
    with pytest.raises(trio.ClosedResourceError):
        bus.subscribe("late", capacity=1)


@time_boxed(5)
async def test_publish_after_close_raises_even_without_subscribers() -> None:
    bus = Bus[int]("trades")
    await bus.publish([1])
    bus.close()
    with pytest.raises(trio.ClosedResourceError):
        await bus.publish([2])
    with pytest.raises(trio.ClosedResourceError):
        await bus.publish([])
    assert bus.statistics().published_batches == 1


@time_boxed(1000)
async def test_close_wakes_a_blocked_publisher_with_closed_resource_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = Bus[int]("raw")
    bus.subscribe("normalizer", capacity=1)
    await bus.publish([1])

    async def close_later() -> None:
        await trio.sleep(3)
        bus.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_later)
        with pytest.raises(trio.ClosedResourceError):
            await bus.publish([2])
    assert trio.current_time() == 3.0


@time_boxed(5)
async def test_receiver_clones_survive_a_subscriber_restart() -> None:
    bus = Bus[int]("trades")
    sub = bus.subscribe("storage", capacity=10)

    with sub.receiver() as first:  # the first incarnation of the subscriber actor
        await bus.publish([1])
        assert await first.receive() == [1]
    # Its channel end is closed now; the bus's original keeps the channel open.
    with trio.fail_after(1):
        await bus.publish([2])
        await bus.publish([3])

    with sub.receiver() as second:  # the restarted actor carries on from where the first left
        assert drain(second) == [[2], [3]]
        bus.close()
    # Even after close, a new clone can drain and then sees the end.
    with sub.receiver() as third, pytest.raises(trio.EndOfChannel):
        await third.receive()


@time_boxed(5)
async def test_receive_batches_coalesces_what_is_queued() -> None:
    bus = Bus[int]("trades")
    receiver = bus.subscribe("storage", capacity=10).receiver()
    for n in range(5):
        await bus.publish([n])

    with trio.fail_after(1):
        assert await receive_batches(receiver, max_batches=3) == [[0], [1], [2]]
        bus.close()
        # Closed but not empty: what is queued comes first, without EndOfChannel.
        assert await receive_batches(receiver) == [[3], [4]]
        with pytest.raises(trio.EndOfChannel):
            await receive_batches(receiver)


@time_boxed(1000)
async def test_receive_batches_waits_for_the_first_batch(autojump_clock: trio.abc.Clock) -> None:
    bus = Bus[int]("trades")
    receiver = bus.subscribe("storage", capacity=10).receiver()

    async def publish_later() -> None:
        await trio.sleep(2)
        await bus.publish([1])
        await trio.sleep(1)
        await bus.publish([2])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_later)
        assert await receive_batches(receiver) == [[1]]
        assert trio.current_time() == 2.0
        assert await receive_batches(receiver) == [[2]]
        assert trio.current_time() == 3.0


@time_boxed(5)
async def test_late_subscriber_gets_only_later_batches() -> None:
    bus = Bus[int]("trades")
    early = bus.subscribe("early", capacity=10)
    await bus.publish([1])
    late = bus.subscribe("late", capacity=10)
    await bus.publish([2])

    assert drain(early.receiver()) == [[1], [2]]
    assert drain(late.receiver()) == [[2]]


def test_subscribe_rejects_bad_arguments() -> None:
    bus = Bus[int]("trades")
    bus.subscribe("a", capacity=1)
    with pytest.raises(ValueError, match="already has a subscriber named 'a'"):
        bus.subscribe("a", capacity=1)
    with pytest.raises(ValueError, match="capacity"):
        bus.subscribe("b", capacity=0)
