import trio


async def test_trio_mode_runs_async_tests(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    await trio.sleep(5)
    assert trio.current_time() - start == 5
