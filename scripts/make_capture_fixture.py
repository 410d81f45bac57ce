"""Record the capture fixture of tests/test_replay.py with the real capture code, from the simulator.

    .venv/bin/python scripts/make_capture_fixture.py [--out tests/fixtures/capture] [--seconds 3]

Runs the simulator (seed 8, small books) and a daemon with `[capture] enabled = true` on Bybit spot and
Binance spot (BTCUSDT and ETHUSDT, trades and books), drops every connection once half-way (so the capture
holds a disconnect, a reconnect and the REST answers that follow), stops the daemon, and copies the files it
wrote into the output directory, replacing the files there. The result differs on every run (real time);
tests check what a capture implies, not fixed numbers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marketflow.config import Config, FeedConfig, default_config  # noqa: E402
from marketflow.daemon import Daemon  # noqa: E402
from marketflow.sim import SimConfig, SimServer  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "capture"


def fixture_config(tmp: Path, sim: SimServer) -> Config:
    base = default_config(env={})
    feeds = (
        FeedConfig(
            exchange="bybit",
            market="spot",
            symbols=("BTC-USDT", "ETH-USDT"),
            ws_url=sim.bybit_ws_url("spot"),
            rest_url=sim.http_url,
        ),
        FeedConfig(
            exchange="binance",
            market="spot",
            symbols=("BTC-USDT", "ETH-USDT"),
            ws_url=sim.binance_ws_base("spot"),
            rest_url=sim.binance_rest_base("spot"),
        ),
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp}/fixture.db"),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        capture=attrs.evolve(base.capture, enabled=True),
        feeds=feeds,
    )


async def record(tmp: Path, seconds: float) -> list[Path]:
    sim = SimServer(SimConfig(seed=8, rate=15, book_rate=8, book_levels=10))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = fixture_config(tmp, sim)
        daemon = Daemon(config)
        await nursery.start(daemon.run)
        await trio.sleep(seconds / 2)
        sim.drop_connections()
        await trio.sleep(seconds / 2)
        await daemon.stop()
        nursery.cancel_scope.cancel()
    return sorted((tmp / "capture").glob("*.jsonl.zst"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = trio.run(record, Path(tmp), args.seconds)
        args.out.mkdir(parents=True, exist_ok=True)
        for old in args.out.glob("*.jsonl.zst"):
            old.unlink()
        for path in files:
            shutil.copy(path, args.out / path.name)
            print(f"{args.out / path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
