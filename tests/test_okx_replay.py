"""OKX through capture and `marketflow replay`: a live run against the simulator is captured (frames and
REST answers: instruments, history trades), with a dropped connection and a wrong checksum on the wire;
replaying the files stores the same trades and finds the same book gap (checksums of recorded traffic are
verified again)."""

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
    ws, rest = (sim.okx_ws_url(), sim.http_url) if sim is not None else (None, None)
    feeds = (
        FeedConfig("okx", "spot", ("BTC-USDT",), book_depth=400, ws_url=ws, rest_url=rest),
        FeedConfig("okx", "swap", ("BTC-USD-PERP",), book_depth=400, ws_url=ws, rest_url=rest),
    )
    return replay_test_config(tmp, db, feeds, capture=sim is not None)


def test_a_captured_okx_run_replays_to_the_same_rows(tmp_path: Path) -> None:
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    trio.run(record, live_dir)
    live = rows(live_dir / "live.db", TRADES)
    assert live and checksum_book_gaps(live_dir / "live.db") == [("BTC-USDT", "checksum")]
    files = sorted((live_dir / "capture").glob("*.jsonl.zst"))
    assert {f.name.split("-2")[0] for f in files} >= {
        "okx-spot",
        "okx-swap",
        "rest-okx-spot",
        "rest-okx-swap",
    }

    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    replay = Replay(config_for(replay_dir, None, "replay.db"), files)
    trio.run(replay.run, clock=ReplayClock())
    assert rows(replay_dir / "replay.db", TRADES) == live
    assert checksum_book_gaps(replay_dir / "replay.db") == [("BTC-USDT", "checksum")]


async def record(live_dir: Path) -> None:
    sim = SimServer(
        SimConfig(seed=12, rate=30.0, book_rate=10.0, book_levels=30, trade_while_unsubscribed=True)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(live_dir, sim, "live.db"))
        await nursery.start(daemon.run)
        with trio.fail_after(30):
            await wait_for(
                lambda: (
                    daemon.instruments.loaded("okx", "swap")
                    and len(daemon.ring.recent("okx", "BTC-USD-PERP")) >= 5
                )
            )
            await wait_for(
                lambda: (v := daemon.books.view("okx", "BTC-USDT", 5)) is not None and v.status == "synced"
            )
            sim.okx_bad_checksum("spot", "BTC-USDT")
            await wait_for(lambda: daemon.books.statistics().books["okx:BTC-USDT"].gaps == 1)
            sim.drop_connections()
            counters = [daemon.feed_counters[name] for name in ("okx-spot", "okx-swap")]
            await wait_for(lambda: all(c.connects >= 2 and c.state == "streaming" for c in counters))
            await daemon.stop()
        nursery.cancel_scope.cancel()
