"""The REST weight budget: a mass reconnect queues its snapshot requests instead of storming the venue."""

from __future__ import annotations

import trio

from marketflow.pipeline.rest import WeightBudget


async def test_requests_wait_for_room_in_the_window(autojump_clock: trio.abc.Clock) -> None:
    budget = WeightBudget(100, window_s=60)
    granted: list[float] = []

    async def snapshot() -> None:
        await budget.acquire(50)
        granted.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):  # five books resyncing at once, each snapshot weighing 50
            nursery.start_soon(snapshot)
    assert [t - start for t in granted] == [0, 0, 60, 60, 120]
    assert budget.waits == 2  # the third and the fifth request each waited once
    assert budget.used() == 50


async def test_pause_after_429_holds_everyone(autojump_clock: trio.abc.Clock) -> None:
    budget = WeightBudget(1000)
    start = trio.current_time()
    budget.pause(30)
    await budget.acquire(1)
    assert trio.current_time() - start == 30
    assert budget.statistics().throttled == 1


async def test_weight_above_the_limit_is_capped_not_stuck(autojump_clock: trio.abc.Clock) -> None:
    budget = WeightBudget(10)
    with trio.fail_after(1):
        await budget.acquire(250)
    assert budget.used() == 10
