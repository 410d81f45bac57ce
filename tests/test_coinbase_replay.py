"""Coinbase through capture and `marketflow replay`: a live run against the simulator is captured (frames
and the ticker REST answers) with a lost level2 update, a lost trades message and a dropped connection;
replaying the files stores the same trades and finds the same sequence gaps (the session's per-connection
`sequence_num` rule runs again on the recorded messages, fresh for each recorded connection)."""

from __future__ import annotations

from pathlib import Path

import trio

from marketflow.config import Config, FeedConfig
from marketflow.daemon import Daemon
from marketflow.replay import Replay, ReplayClock
from marketflow.sim import SimConfig, SimServer
from tests.conftest import wait_for
from tests.venue_replay import TRADES, replay_test_config, rows


def config_for(tmp: Path, sim: SimServer | None, db: str) -> Config:
    ws, rest = sim.urls("coinbase", "spot") if sim is not None else (None, None)
    feeds = (FeedConfig("coinbase", "spot", ("BTC-USD", "ETH-USD"), book_depth=0, ws_url=ws, rest_url=rest),)
    return replay_test_config(tmp, db, feeds, capture=sim is not None)


SEQUENCE_GAPS = "SELECT symbol, reason FROM gaps WHERE channel = 'book' AND reason LIKE 'sequence_num%'"


def test_a_captured_coinbase_run_replays_to_the_same_rows(tmp_path: Path) -> None:
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    trio.run(record, live_dir)
    live_trades = rows(live_dir / "live.db", TRADES)
    live_gaps = rows(live_dir / "live.db", SEQUENCE_GAPS)
    assert live_trades and len(live_gaps) == 4  # two sequence gaps, each on both books
    files = sorted((live_dir / "capture").glob("*.jsonl.zst"))
    assert {f.name.split("-2")[0] for f in files} >= {"coinbase-spot", "rest-coinbase-spot"}

    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    replay = Replay(config_for(replay_dir, None, "replay.db"), files)
    trio.run(replay.run, clock=ReplayClock())
    assert rows(replay_dir / "replay.db", TRADES) == live_trades
    assert rows(replay_dir / "replay.db", SEQUENCE_GAPS) == live_gaps


async def record(live_dir: Path) -> None:
    sim = SimServer(
        SimConfig(seed=13, rate=30.0, book_rate=10.0, book_levels=30, trade_while_unsubscribed=True)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(live_dir, sim, "live.db"))
        await nursery.start(daemon.run)
        books = daemon.books
        with trio.fail_after(30):
            await wait_for(
                lambda: all(
                    (v := books.view("coinbase", p)) and v.status == "synced" for p in ("BTC-USD", "ETH-USD")
                )
            )
            sim.skip_update("coinbase", "spot", "BTC-USD")
            await wait_for(lambda: books.statistics().books["coinbase:BTC-USD"].gaps == 1)
            await wait_for(lambda: not books.open_gaps)  # both books resynced: the next gap is a new row
            sim.coinbase_lose_trades("ETH-USD")
            await wait_for(lambda: any(r.channel == "trades" and r.recovered for r in daemon.ledger.query()))
            sim.drop_connections()
            counters = daemon.feed_counters["coinbase-spot"]
            await wait_for(lambda: counters.connects >= 2 and counters.state == "streaming")
            await daemon.stop()
        nursery.cancel_scope.cancel()
