"""Kraken through capture and `marketflow replay`: a live run against the simulator is captured (frames
and REST answers: AssetPairs), with a wrong checksum and a dropped connection (the resubscription's trade
snapshot closes its gap; the trades seen twice are dropped by id); replaying the files stores the same
trades and finds the same book gap (every recorded book message's checksum is verified again, with the
precisions of the recorded `instrument` snapshot)."""

from __future__ import annotations

from pathlib import Path

import trio

from marketflow.config import Config, FeedConfig
from marketflow.daemon import Daemon
from marketflow.replay import Replay, ReplayClock
from marketflow.sim import SimConfig, SimServer
from tests.conftest import wait_for
from tests.venue_replay import TRADES, checksum_book_gaps, replay_test_config, rows


def config_for(tmp: Path, sim: SimServer | None, db: str) -> Config:
    ws, rest = sim.urls("kraken", "spot") if sim is not None else (None, None)
    feeds = (FeedConfig("kraken", "spot", ("BTC-USD", "ETH-USD"), book_depth=10, ws_url=ws, rest_url=rest),)
    return replay_test_config(tmp, db, feeds, capture=sim is not None)


def test_a_captured_kraken_run_replays_to_the_same_rows(tmp_path: Path) -> None:
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    trio.run(record, live_dir)
    live = rows(live_dir / "live.db", TRADES)
    assert live and checksum_book_gaps(live_dir / "live.db") == [("BTC-USD", "checksum")]
    files = sorted((live_dir / "capture").glob("*.jsonl.zst"))
    assert {f.name.split("-2")[0] for f in files} >= {"kraken-spot", "rest-kraken-spot"}

    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    replay = Replay(config_for(replay_dir, None, "replay.db"), files)
    trio.run(replay.run, clock=ReplayClock())
    assert rows(replay_dir / "replay.db", TRADES) == live
    assert checksum_book_gaps(replay_dir / "replay.db") == [("BTC-USD", "checksum")]


async def record(live_dir: Path) -> None:
    sim = SimServer(
        SimConfig(seed=13, rate=30.0, book_rate=10.0, book_levels=30, trade_while_unsubscribed=True)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(live_dir, sim, "live.db"))
        await nursery.start(daemon.run)
        with trio.fail_after(30):
            await wait_for(lambda: daemon.instruments.loaded("kraken", "spot"))
            await wait_for(
                lambda: (v := daemon.books.view("kraken", "BTC-USD", 5)) is not None and v.status == "synced"
            )
            sim.kraken.bad_checksum("BTC/USD")
            await wait_for(lambda: daemon.books.statistics().books["kraken:BTC-USD"].gaps == 1)
            counters = daemon.feed_counters["kraken-spot"]
            sim.drop_connections()
            await wait_for(lambda: counters.connects >= 2 and counters.state == "streaming")
            await wait_for(lambda: len(daemon.ring.recent("kraken", "ETH-USD")) >= 60)
            await daemon.stop()
        nursery.cancel_scope.cancel()
