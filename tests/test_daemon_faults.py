"""The daemon under feed failures: one broken feed opens its own circuit and touches nothing else."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from marketflow.config import FeedConfig
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config, stored_rows, wait_for


async def dead_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


async def test_a_failing_feed_opens_its_circuit_and_siblings_keep_storing(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    sim = SimServer(SimConfig(seed=31, rate=20))
    port = await dead_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = sim_config(tmp_path, sim, markets=("spot",), flush_interval_s=0.05)
        broken = FeedConfig(
            "bybit", "linear", ("BTC-USDT-PERP",), ws_url=f"ws://127.0.0.1:{port}/v5/public/linear"
        )
        config = attrs.evolve(
            config,
            feeds=(*config.feeds, broken),
            supervisor=attrs.evolve(
                config.supervisor, circuit_failures=3, circuit_window_s=300, circuit_open_s=60
            ),
        )
        daemon = Daemon(config)
        await nursery.start(daemon.run)

        def child(name: str):  # type: ignore[no-untyped-def]
            return next(c for c in daemon.supervisor.statistics().children if c.name == name)

        with trio.fail_after(120):
            await wait_for(lambda: child("bybit-linear").circuit == "open")
        opened = child("bybit-linear")
        assert opened.state == "circuit_open" and opened.failures == 3
        assert "cannot connect" in (opened.last_error or "")
        assert opened.next_start_at is not None
        # The circuit stays open for circuit_open_s, then one trial start, which fails and reopens it.
        assert opened.next_start_at - trio.current_time() <= 60
        for name in ("storage", "normalizer", "bybit-spot"):
            assert child(name).state == "running" and child(name).restarts == 0
        with trio.fail_after(120):
            await wait_for(lambda: child("bybit-linear").failures == 4)
        assert child("bybit-linear").circuit == "open"
        # The healthy feed kept storing the whole time.
        await wait_for(lambda: len(stored_rows(tmp_path / "marketflow.db")) > 0)
        assert daemon.feed_counters["bybit-spot"].connects == 1
        await daemon.stop()
        nursery.cancel_scope.cancel()
