"""`analytics.enabled`: the key, and a daemon without the live engine that answers analytics from storage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from marketflow.api import queries
from marketflow.config import ConfigError, parse_config
from marketflow.daemon import Daemon
from marketflow.model import now_us
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config, stored_rows, wait_for


def test_enabled_key() -> None:
    assert parse_config("").analytics.enabled is True
    assert parse_config("[analytics]\nenabled = false\n").analytics.enabled is False
    with pytest.raises(ConfigError) as bad:
        parse_config('[analytics]\nenabled = "no"\n', source="m.toml")
    assert [str(issue) for issue in bad.value.issues] == [
        'm.toml:2: analytics.enabled: must be true or false, got string "no"'
    ]


async def test_a_daemon_without_analytics_answers_from_storage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimServer(SimConfig(seed=5, rate=200))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = sim_config(tmp_path, sim, markets=("spot",), flush_interval_s=0.05)
            config = attrs.evolve(config, analytics=attrs.evolve(config.analytics, enabled=False))
            daemon = Daemon(config)
            assert daemon.analytics is None and daemon.query.analytics is None
            assert "analytics" not in daemon.supervisor.child_names()
            assert "analytics" not in [sub.name for sub in daemon.trade_bus.statistics().subscribers]
            await nursery.start(daemon.run)
            await wait_for(lambda: len(stored_rows(tmp_path / "marketflow.db")) >= 20)
            flow: dict[str, Any] = {"bars": []}
            while not flow["bars"]:  # until a whole 1 s bar with trades lies in the past
                await trio.sleep(0.1)
                # Whole 1 s bars that ended in the past: both answers below see the same trades.
                until = (now_us() - 250_000) // 1_000_000 * 1_000_000
                flow = await queries.order_flow(
                    daemon.query, "bybit", "BTC-USDT", "1s", since=0, until=until, footprint=True
                )
            assert "footprint" in flow["bars"][0]
            candles = await queries.candles(daemon.query, "bybit", "BTC-USDT", "1s", since=0, until=until)
            assert sum(c["trades"] for c in candles["candles"]) == sum(b["trades"] for b in flow["bars"])
            # Without analytics the ring closes the trade bus on shutdown, so the writer drains it and stops
            # on its own instead of being cancelled at its shutdown deadline (5 s here).
            with caplog.at_level(logging.WARNING, logger="marketflow.supervisor"):
                await daemon.stop()
            assert not [r.getMessage() for r in caplog.records if "did not stop within" in r.getMessage()]
            nursery.cancel_scope.cancel()


def test_live_bars_reaches_the_engine(tmp_path: Path) -> None:
    config = parse_config(
        f'[daemon]\nstate_dir = "{tmp_path}"\n[storage]\nurl = "sqlite:///{tmp_path}/d.db"\n'
        "[analytics]\nlive_bars = 30\n",
        source="t.toml",
        env={},
    )
    daemon = Daemon(config)
    assert daemon.analytics is not None and daemon.analytics._max_bars == 30
