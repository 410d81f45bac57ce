"""Simulator → daemon → SQLite over real sockets: every trade the simulator sent is stored exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import trio

from marketflow.daemon import Daemon
from marketflow.sim import Faults, SimConfig, SimServer, SimTrade
from tests.conftest import sim_config, stored_rows, wait_for

PERP = {"spot": "", "linear": "-PERP"}
NATIVES = ("BTCUSDT", "ETHUSDT")


def expected_rows(trades: list[SimTrade]) -> list[tuple[str, str, str, str, str, str, int]]:
    return [
        (
            "bybit",
            t.symbol.removesuffix("USDT") + "-USDT" + PERP[t.category],
            t.id,
            t.price,
            t.size,
            t.side.lower(),
            t.ts_ms * 1000,
        )
        for t in trades
    ]


async def wait_stored(daemon: Daemon, sim: SimServer, db: Path) -> None:
    """Until the simulator stopped sending and the writer has committed every trade it delivered.

    Not before it stopped: the writer can be level with the simulator mid-stream, and what it delivers
    while the daemon stops may then never be read.
    """
    await sent_everything(sim)
    wanted = set(expected_rows(sim.delivered_trades(exchange="bybit")))
    await wait_for(lambda: wanted <= set(stored_rows(db)), 0.05)


async def sent_everything(
    sim: SimServer,
    markets: tuple[str, ...] = ("spot", "linear"),
    natives: tuple[str, ...] = NATIVES,
    interval: float = 0.05,
) -> None:
    """Until the simulator's Bybit tapes that ever ran are exhausted (`max_frames`) and every frame they cut
    was written to its socket or dropped with it: nothing more will be delivered.

    A feed's connection takes its frames out of the backlog just before the write that delivers them, so
    the count of frames sent (by every feed) must also stay the same over one poll of `interval`.
    """
    feeds = [sim.trade_feed("bybit", market, native) for market in markets for native in natives]
    last = -1

    def done() -> bool:
        nonlocal last
        before, last = last, sim.statistics().frames_sent
        started = [feed for feed in feeds if feed.frames_published or feed.subscribed]
        return (
            before == last
            and all(feed.exhausted for feed in started)
            and all(sink.backlog() == 0 for feed in started for sink in feed.sinks())
        )

    await wait_for(done, interval)


def assert_exactly_once(sim: SimServer, db: Path, *, backfilled: bool = False) -> None:
    """Every delivered trade stored once, exactly; with `backfilled`, more may be stored, all real."""
    rows = stored_rows(db)
    duplicates = [key for key, n in Counter((r[0], r[1], r[2]) for r in rows).items() if n > 1]
    assert duplicates == []
    delivered = expected_rows(sim.delivered_trades(exchange="bybit"))
    if not backfilled:
        assert sorted(rows) == sorted(delivered)
        return
    assert set(delivered) <= set(rows)
    generated = expected_rows(
        [
            t
            for c in ("spot", "linear")
            for n in ("BTCUSDT", "ETHUSDT")
            for t in sim.generated_trades("bybit", c, n)
        ]
    )
    assert set(rows) <= set(generated)


async def test_every_trade_stored_exactly_once_both_categories(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=11, rate=200, max_frames=150))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(sim_config(tmp_path, sim, flush_interval_s=0.05))
            await nursery.start(daemon.run)
            await wait_stored(daemon, sim, tmp_path / "marketflow.db")
            await daemon.stop()
            nursery.cancel_scope.cancel()
    delivered = sim.delivered_trades()
    assert {t.category for t in delivered} == {"spot", "linear"}
    assert len(delivered) >= 4 * 150  # 4 topics x 150 frames, at least one trade each
    assert_exactly_once(sim, tmp_path / "marketflow.db")


async def test_stored_exactly_once_across_injected_disconnects(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=12, rate=100, max_frames=300))
    db = tmp_path / "marketflow.db"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(sim_config(tmp_path, sim, flush_interval_s=0.05))
            await nursery.start(daemon.run)
            for _ in range(2):
                # Both connections streaming again, and 20 more frames sent, before each drop.
                sent = sim.statistics().frames_sent
                await wait_for(lambda: all(c.state == "streaming" for c in daemon.feed_counters.values()))
                await wait_for(lambda s=sent: sim.statistics().frames_sent >= s + 20)
                assert sim.drop_connections() == 2
            # A drop can lose frames already on the wire (the close may reset the connection); the
            # catch-up over REST after the reconnect brings them back. Once the simulator has sent its
            # last frame, wait for every delivered trade to be stored — not for a count.
            await sent_everything(sim)
            wanted = set(expected_rows(sim.delivered_trades(exchange="bybit")))
            await wait_for(lambda: wanted <= set(stored_rows(db)), 0.05)
            stats = {c.name: c for c in daemon.supervisor.statistics().children}
            await daemon.stop()
            nursery.cancel_scope.cancel()
    for name in ("bybit-spot", "bybit-linear"):
        assert stats[name].restarts >= 2
        assert daemon.feed_counters[name].connects >= 3
    # Trades generated but unsent when the connection dropped are fetched back over REST: more rows than
    # were delivered over the socket, every one of them a real trade, none twice.
    assert_exactly_once(sim, db, backfilled=True)


async def test_malformed_frames_are_counted_and_the_feed_goes_on(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=13, rate=200, max_frames=100, faults=Faults(malformed_every=10)))
    db = tmp_path / "marketflow.db"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(sim_config(tmp_path, sim, flush_interval_s=0.05))
            await nursery.start(daemon.run)
            await wait_stored(daemon, sim, db)
            normalizer = next(c for c in daemon.supervisor.statistics().children if c.name == "normalizer")
            await daemon.stop()
            nursery.cancel_scope.cancel()
    assert normalizer.restarts == 0
    decoded = normalizer.actor.feeds  # type: ignore[union-attr]
    assert sum(f.malformed for f in decoded.values()) > 0
    assert_exactly_once(sim, db)


async def test_rejected_topic_is_visible_not_silent(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=14, rate=50, faults=Faults(reject_topics=("publicTrade.ETHUSDT",))))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(sim_config(tmp_path, sim, markets=("linear",)))
            await nursery.start(daemon.run)
            counters = daemon.feed_counters["bybit-linear"]
            await wait_for(lambda: counters.state == "streaming")
            assert counters.rejected == {
                "publicTrade.ETHUSDT": "error:handler not found,topic:publicTrade.ETHUSDT"
            }
            assert counters.subscribed == ["publicTrade.BTCUSDT"]
            await daemon.stop()
            nursery.cancel_scope.cancel()


async def test_stall_trips_the_watchdog_and_the_feed_reconnects(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=15, rate=50))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(sim_config(tmp_path, sim, markets=("spot",)))
            await nursery.start(daemon.run)
            counters = daemon.feed_counters["bybit-spot"]
            await wait_for(lambda: counters.state == "streaming" and counters.data_frames > 0)
            sim.stall(3.0)  # longer than the feed's 2 s stale timeout
            await wait_for(lambda: counters.connects >= 2)
            assert (
                counters.last_error is not None and "stale: nothing received for 2.0 s" in counters.last_error
            )
            await daemon.stop()
            nursery.cancel_scope.cancel()
