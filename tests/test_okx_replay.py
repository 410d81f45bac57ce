"""OKX through capture and `marketflow replay`: a live run against the simulator is captured (frames and
REST answers: instruments, history trades), with a dropped connection and a wrong checksum on the wire;
replaying the files stores the same trades and finds the same book gap (checksums of recorded traffic are
verified again)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import attrs
import trio

from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.replay import Replay, ReplayClock
from marketflow.sim import SimConfig, SimServer
from tests.conftest import wait_for


def config_for(tmp: Path, sim: SimServer | None, db: str) -> Config:
    base = default_config(env={})
    ws, rest = (sim.okx_ws_url(), sim.http_url) if sim is not None else (None, None)
    feeds = (
        FeedConfig("okx", "spot", ("BTC-USDT",), book_depth=400, ws_url=ws, rest_url=rest),
        FeedConfig("okx", "swap", ("BTC-USD-PERP",), book_depth=400, ws_url=ws, rest_url=rest),
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp}/{db}", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        capture=attrs.evolve(base.capture, enabled=sim is not None),
        feeds=feeds,
    )


def trades(db: Path) -> list[tuple[str, ...]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(
            conn.execute("SELECT exchange, symbol, id, price, amount, side, ts FROM trades").fetchall()
        )
    finally:
        conn.close()


def book_gaps(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT symbol, reason FROM gaps WHERE channel = 'book' AND reason LIKE 'checksum%'"
        )
        return sorted((symbol, reason.split(" is not")[0][:8]) for symbol, reason in rows.fetchall())
    finally:
        conn.close()


def test_a_captured_okx_run_replays_to_the_same_rows(tmp_path: Path) -> None:
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    trio.run(record, live_dir)
    live = trades(live_dir / "live.db")
    assert live and book_gaps(live_dir / "live.db") == [("BTC-USDT", "checksum")]
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
    assert trades(replay_dir / "replay.db") == live
    assert book_gaps(replay_dir / "replay.db") == [("BTC-USDT", "checksum")]


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
