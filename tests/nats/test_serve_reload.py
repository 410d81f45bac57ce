"""A serving daemon's feeds only name the cluster's markets: a reload that adds one connects nothing and
mirrors its book from NATS."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from marketflow.config import FeedConfig
from marketflow.daemon import Daemon
from marketflow.nats.serve import MirrorBook
from marketflow.nats.server import NatsServer
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config
from tests.nats.conftest import with_nats


async def test_a_feed_added_to_a_serving_daemon_is_mirrored_not_connected(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=3))
    config = with_nats(sim_config(tmp_path, sim, markets=("spot",)), [nats_server], ("serve",))
    extra = FeedConfig(
        "bybit", "linear", ("BTC-USDT-PERP",), channels=("trades", "book"), ws_url="ws://127.0.0.1:9"
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            before = {c.name for c in daemon.supervisor.statistics().children}
            result = await daemon.apply_config(attrs.evolve(config, feeds=(*config.feeds, extra)))
            after = {c.name for c in daemon.supervisor.statistics().children}
            await daemon.stop()
            nursery.cancel_scope.cancel()
    assert result.added == ("bybit-linear",)
    assert after == before and not any(name.startswith("bybit") for name in after)
    assert isinstance(daemon.books.books[("bybit", "BTC-USDT-PERP")], MirrorBook)
