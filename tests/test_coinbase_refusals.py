"""A Coinbase product the venue refuses costs only itself: the subscribe message it was in is refused
whole (the error names the one product), and the feed asks again for that message's other products."""

from __future__ import annotations

from pathlib import Path

import trio

from marketflow.daemon import Daemon
from marketflow.exchanges.base import Ack
from marketflow.exchanges.coinbase.frames import Session
from marketflow.sim import Faults, SimConfig, SimServer
from tests.conftest import wait_for
from tests.test_coinbase_end_to_end import config_for, stored


def test_the_error_names_one_product_and_its_topics_alone() -> None:
    session = Session("spot", ["market_trades:BTC-USD", "market_trades:DOGE-XYZ"])
    ack = session.control(
        b'{"type":"error","message":"Failed to subscribe","reason":"DOGE-XYZ is not a valid product"}'
    )
    assert isinstance(ack, Ack) and not ack.success and ack.others_refused
    assert ack.rejected == ("level2:DOGE-XYZ", "market_trades:DOGE-XYZ", "ticker:DOGE-XYZ")
    whole = session.control(b'{"type":"error","message":"Failed to subscribe","reason":"one channel"}')
    assert isinstance(whole, Ack) and whole.rejected == () and not whole.others_refused
    (again,) = session.subscribe_topic_requests(["market_trades:BTC-USD"])
    assert again.payload == b'{"type":"subscribe","product_ids":["BTC-USD"],"channel":"market_trades"}'


async def test_a_refused_product_refuses_only_itself(tmp_path: Path) -> None:
    # Both products go in one subscribe message (up to 25 a message); the simulator refuses it whole.
    sim = SimServer(SimConfig(seed=62, rate=20, faults=Faults(reject_topics=("market_trades:ETH-USD",))))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(config_for(tmp_path, sim, channels=("trades",)))
            await nursery.start(daemon.run)
            await wait_for(lambda: len(stored(tmp_path / "mf.db", "BTC-USD")) >= 5)
            counters = daemon.feed_counters["coinbase-spot"]
            assert list(counters.rejected) == ["market_trades:ETH-USD"]
            assert "ETH-USD is not a valid product" in counters.rejected["market_trades:ETH-USD"]
            assert counters.subscribed == ["market_trades:BTC-USD"]
            assert stored(tmp_path / "mf.db", "ETH-USD") == []
            await daemon.stop()
            nursery.cancel_scope.cancel()
