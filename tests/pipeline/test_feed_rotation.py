"""A feed rotating its connection (replacement first) loses nothing the old connection still had in flight.

A real feed against the simulator's Binance spot side, under `autojump_clock`. The test holds the feed's
only subscriber back, so the old connection's reader stalls (the bus blocks) while the venue keeps
writing trades to its socket — what a busy machine does to a feed by chance. The replacement is then
subscribed, and every trade the venue sent before that must still come out of the old connection.
"""

from __future__ import annotations

import json

import trio

from marketflow.exchanges import venue
from marketflow.model import RawFrames
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.runtime import Bus
from marketflow.sim import SimConfig, SimServer
from tests.conftest import wait_for


def trade_ids(batches: list[list[RawFrames]]) -> list[int]:
    """Aggregate trade ids in the order the feed published them (both connections' copies)."""
    ids = []
    for batch in batches:
        for raw in batch:
            for frame in raw.frames:
                data = json.loads(frame)["data"]
                if data.get("e") == "aggTrade":
                    ids.append(int(data["a"]))
    return ids


async def test_rotation_publishes_what_the_old_connection_still_held(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = SimServer(SimConfig(rate=20.0, symbols=("BTCUSDT",)))
    await nursery.start(sim.run)
    binance = venue("binance")
    (plan,) = binance.connections("spot", ["BTCUSDT"], ["trades"], 0, sim.binance_ws_base("spot"))
    bus: Bus[RawFrames] = Bus("raw")
    sub = bus.subscribe("test", capacity=1)
    counters = FeedCounters()
    feed = Feed(
        name="binance-spot",
        exchange="binance",
        market="spot",
        url=plan.url,
        session_factory=lambda: binance.session("spot", plan.topics),
        bus=bus,
        counters=counters,
        stale_timeout_s=30.0,
        ping_interval_s=20.0,
    )
    got: list[list[RawFrames]] = []
    with trio.fail_after(60), sub.receiver() as rx:
        await nursery.start(feed.run)
        while len(trade_ids(got)) < 5:
            got.append(await rx.receive())
        # The subscriber stops reading: the old connection's reader blocks on the full bus while
        # the venue goes on writing trades into its socket.
        stalled_at = len(sim.generated_trades("binance", "spot", "BTCUSDT"))
        await wait_for(lambda: len(sim.generated_trades("binance", "spot", "BTCUSDT")) >= stalled_at + 10)
        subscribes = sim.statistics().subscribes
        feed.request_rotation()
        # The replacement is subscribed (and the old connection told to go) while the reader still
        # stalls; only then does the subscriber read again.
        await wait_for(lambda: sim.statistics().subscribes > subscribes)
        sent_before_replacement = int(sim.generated_trades("binance", "spot", "BTCUSDT")[-1].id)
        # Read on until the replacement is live and publishing trades newer than that.
        while counters.rotations == 0 or max(trade_ids(got)) <= sent_before_replacement:
            got.append(await rx.receive())
        feed.request_stop()
    ids = sorted(set(trade_ids(got)))  # the two connections' overlap counted once
    assert ids == list(range(ids[0], ids[-1] + 1)), "trades lost in the rotation"
    assert (counters.connects, counters.rotations, counters.disconnects) == (2, 1, 0)
