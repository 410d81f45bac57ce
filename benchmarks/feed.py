"""Feed benchmark: simulator at full speed → transport → Bybit decode → normalizer → SQLite → analytics,
and books.

    python -m benchmarks.feed [--frames N] [--market spot|linear] [--repeat K] [--book-updates N]
                              [--decode-frames N] [--json PATH]

Analytics is a stage of its own: the whole daemon (feeds, normalizer, SQLite writer, trade ring, HTTP)
with `analytics.enabled = false`, then with the live engine (default config: 1m, 5m, 1h), alternating
K times, best of K each; reported as µs CPU per trade of each and their ratio (target ≤ 1.25×), with the
trades the engine took and any the bus dropped for it (drop-oldest: it must not hold up the feeds).

The book stage subscribes Binance spot diff depth at full speed, seeds the book from a REST snapshot and
applies every update with the official algorithm's checks (decode + synchronizer), reporting book
updates/s per core (= 1 / CPU per update).

The simulator runs in its own process (`marketflow sim --rate 0`), so the CPU figures are this process's
alone: what marketflow spends per frame and per trade at each stage. Each stage is measured on a fresh
simulator with the same seed, so every stage sees the same frames. Throughput is capped by whichever side
is slower; the `client CPU` column says how busy marketflow was (100% = marketflow was the bottleneck).

Last, the decode cost of every venue side by side (`benchmarks.decode`): µs per trade frame and per book
frame of each venue's decoder, and with its book rule (sequence chain, checksum) on every message.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from benchmarks import decode as decode_bench
from marketflow.config import FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.exchanges import binance, bybit
from marketflow.exchanges.base import Decoded
from marketflow.exchanges.binance.book import BinanceSpotBook
from marketflow.exchanges.ws import connect_ws
from marketflow.model import RawFrames, Trade
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.bus import Bus, Overflow

SYMBOL = "BTCUSDT"


class Simulator:
    """`marketflow sim` in a subprocess, serving one symbol as fast as it is read, up to `frames`."""

    def __init__(self, frames: int, seed: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "marketflow",
                "sim",
                "--port",
                "0",
                "--rate",
                "0",
                "--seed",
                str(seed),
                "--symbols",
                SYMBOL,
                "--max-frames",
                str(frames),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.urls: dict[str, str] = {}
        for line in self.proc.stdout:
            parts = line.split()
            if parts[:1] == ["bybit"]:
                self.urls[parts[1]] = parts[2]
            if parts[:1] == ["binance"]:
                self.urls[f"binance-{parts[1]}"] = parts[2]
                self.urls[f"binance-{parts[1]}-rest"] = parts[4]
            if parts[:1] == ["http"]:
                break

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@attrs.frozen
class StageResult:
    stage: str
    frames: int
    trades: int
    wall_s: float
    cpu_s: float

    def cpu_per_trade(self) -> float:
        """µs of CPU per trade (inf without trades)."""
        return self.cpu_s / self.trades * 1e6 if self.trades else float("inf")

    def row(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "frames": self.frames,
            "trades": self.trades,
            "frames_per_s": self.frames / self.wall_s,
            "trades_per_s": self.trades / self.wall_s,
            "cpu_us_per_frame": self.cpu_s / self.frames * 1e6,
            "cpu_us_per_trade": self.cpu_s / self.trades * 1e6 if self.trades else None,
            "client_cpu_pct": 100 * self.cpu_s / self.wall_s,
        }


async def _subscribe(url: str) -> Any:
    conn = await connect_ws(url)
    session = bybit.Session("spot" if url.endswith("spot") else "linear", [bybit.trade_topic(SYMBOL)])
    for request in session.subscribe_requests():
        await conn.send_text(request.payload)
    return conn, session


async def stage_transport(url: str, frames: int, decode: bool) -> tuple[int, int]:
    conn, session = await _subscribe(url)
    market = "spot" if url.endswith("spot") else "linear"
    decoder = bybit.FrameDecoder("bybit", market, {SYMBOL: "BTC-USDT"})
    data_frames = trades = 0
    async with conn:
        while data_frames < frames:
            messages = await conn.receive_messages()
            data = [m for m in messages if session.is_data(m)]
            data_frames += len(data)
            if decode:
                out = Decoded()
                decoder.decode(data, 0, out)
                trades += len(out.trades)
    return data_frames, trades


async def stage_pipeline(url: str, frames: int) -> tuple[int, int]:
    market = "spot" if url.endswith("spot") else "linear"
    raw: Bus[RawFrames] = Bus("raw")
    trades_bus: Bus[Trade] = Bus("trades")
    raw_sub = raw.subscribe("normalizer", 256, Overflow.BLOCK)
    sink_sub = trades_bus.subscribe("sink", 256, Overflow.BLOCK)
    counters = FeedCounters()
    feed = Feed(
        name="bybit",
        exchange="bybit",
        market=market,
        url=url,
        session_factory=lambda: bybit.Session(market, [bybit.trade_topic(SYMBOL)]),
        bus=raw,
        counters=counters,
        stale_timeout_s=30,
        ping_interval_s=20,
    )
    normalizer = Normalizer(
        raw_sub, trades_bus, {"bybit": bybit.FrameDecoder("bybit", market, {SYMBOL: "BTC-USDT"})}
    )
    got = 0

    async def sink() -> None:
        nonlocal got
        with sink_receiver:
            async for batch in sink_receiver:
                got += len(batch)

    sink_receiver = sink_sub.receiver()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink)
        async with trio.open_nursery() as pipeline:
            await pipeline.start(normalizer.run)
            async with trio.open_nursery() as feeds:
                await feeds.start(feed.run)
                while counters.data_frames < frames:  # noqa: ASYNC110 - polling a counter, no event exists
                    await trio.sleep(0.005)
                feed.request_stop()
            raw.close()  # the normalizer decodes what is queued, then returns
        trades_bus.close()
    return counters.data_frames, got


async def stage_storage(
    url: str, frames: int, db_dir: Path, *, analytics: bool = False, seen: dict[str, int] | None = None
) -> tuple[int, int]:
    """The whole daemon on a fresh SQLite file, with or without the live analytics engine."""
    market = "spot" if url.endswith("spot") else "linear"
    base = default_config(env={})
    symbol = "BTC-USDT" if market == "spot" else "BTC-USDT-PERP"
    path = Path(tempfile.mkdtemp(dir=db_dir))
    config = attrs.evolve(
        base,
        feeds=(FeedConfig("bybit", market, (symbol,), channels=("trades",), ws_url=url),),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{path}/bench.db"),
        daemon=attrs.evolve(base.daemon, state_dir=str(path)),
        analytics=attrs.evolve(base.analytics, enabled=analytics),
    )
    daemon = Daemon(config)
    counters = daemon.feed_counters[f"bybit-{market}"]
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        while counters.data_frames < frames:  # noqa: ASYNC110 - polling a counter, no event exists
            await trio.sleep(0.01)
        await daemon.stop()
    if seen is not None and daemon.analytics is not None:
        seen["analytics_trades"] = daemon.analytics.statistics().trades
        subscribers = daemon.trade_bus.statistics().subscribers
        seen["analytics_dropped"] = sum(s.dropped_items for s in subscribers if s.name == "analytics")
    # Stopping flushed every row; the count is what was committed.
    conn = sqlite3.connect(path / "bench.db")
    try:
        rows = int(conn.execute("SELECT count(*) FROM trades").fetchone()[0])
    finally:
        conn.close()
    return counters.data_frames, rows


async def stage_books(base: str, rest: str, updates: int) -> tuple[int, int]:
    """Binance spot depth at full speed: decode + the official local-book algorithm on every update."""
    conn = await connect_ws(base + "/stream")
    session = binance.Session("spot", [binance.depth_topic(SYMBOL)])
    decoder = binance.FrameDecoder("binance", "spot", {SYMBOL: "BTC-USDT"})
    sync = BinanceSpotBook()
    for request in session.subscribe_requests():
        await conn.send_text(request.payload)
    applied = 0
    async with conn, httpx.AsyncClient() as client:
        while applied < updates:
            messages = await conn.receive_messages()
            out = Decoded()
            decoder.decode([m for m in messages if session.is_data(m)], 0, out)
            for update in out.books:
                if sync.on_update(update) is not None:
                    raise AssertionError("gap on a continuous stream")
            if sync.needs_snapshot():  # first sync only: a gap on this stream raises above
                sync.snapshot_requested()
                body = (
                    await client.get(rest + "/api/v3/depth", params={"symbol": SYMBOL, "limit": 1000})
                ).content
                sync.on_snapshot(binance.parse_rest_depth(body, "binance", "BTC-USDT", 0))
            applied = sync.statistics().updates_applied
    return applied, 0


def measure(
    name: str,
    market: str,
    frames: int,
    seed: int,
    body: Callable[[str], Awaitable[tuple[int, int]]],
    *extra: str,
) -> StageResult:
    sim = Simulator(frames, seed, *extra)
    try:
        url = (
            sim.urls[market]
            if market in sim.urls
            else sim.urls["binance-spot"] + " " + sim.urls["binance-spot-rest"]
        )
        wall0, cpu0 = time.perf_counter(), time.process_time()
        got_frames, got_trades = trio.run(body, url)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        sim.close()
    return StageResult(name, got_frames, got_trades, wall, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--market", choices=["spot", "linear"], default="spot")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="daemon runs without/with analytics, best of K")
    parser.add_argument("--book-updates", type=int, default=50_000, help="book updates to apply (0: skip)")
    parser.add_argument(
        "--decode-frames", type=int, default=5_000, help="frames per venue for the decode table (0: skip)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    n, market, seed = args.frames, args.market, args.seed
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            measure("transport", market, n, seed, lambda url: stage_transport(url, n, decode=False)),
            measure("+ bybit decode", market, n, seed, lambda url: stage_transport(url, n, decode=True)),
            measure("+ feed/normalizer actors", market, n, seed, lambda url: stage_pipeline(url, n)),
        ]
        seen: dict[str, int] = {}
        pairs = [
            (
                measure(
                    "+ SQLite writer (daemon)", market, n, seed, lambda url: stage_storage(url, n, Path(tmp))
                ),
                measure(
                    "+ analytics (daemon)",
                    market,
                    n,
                    seed,
                    lambda url: stage_storage(url, n, Path(tmp), analytics=True, seen=seen),
                ),
            )
            for _ in range(max(1, args.repeat))
        ]
        without = min((p[0] for p in pairs), key=StageResult.cpu_per_trade)
        with_analytics = min((p[1] for p in pairs), key=StageResult.cpu_per_trade)
        results += [without, with_analytics]
        if args.book_updates:
            books = measure(
                "binance spot depth → book",
                "books",
                0,
                seed,
                lambda url: stage_books(url.split()[0], url.split()[1], args.book_updates),
                "--book-rate",
                "0",
            )
    rows = [r.row() for r in results]
    print(
        f"feed benchmark: bybit {market} {SYMBOL}, {n} frames per stage, simulator in its own process, "
        f"{os.cpu_count()} cores"
    )
    print(f"{'stage':<28}{'frames/s':>11}{'trades/s':>11}{'µs/frame':>10}{'µs/trade':>10}{'client CPU':>12}")
    for row in rows:
        per_trade = row["cpu_us_per_trade"]
        print(
            f"{row['stage']:<28}{row['frames_per_s']:>11,.0f}{row['trades_per_s']:>11,.0f}"
            f"{row['cpu_us_per_frame']:>10.2f}{per_trade if per_trade is not None else float('nan'):>10.2f}"
            f"{row['client_cpu_pct']:>11.0f}%"
        )
    base = rows[0]["cpu_us_per_frame"]
    print(
        "CPU per frame relative to the transport alone: "
        + ", ".join(f"{r['stage']} {r['cpu_us_per_frame'] / base:.2f}x" for r in rows)
    )
    off, on = without.cpu_per_trade(), with_analytics.cpu_per_trade()
    analytics_row = {
        "runs": len(pairs),
        "cpu_us_per_trade_without": off,
        "cpu_us_per_trade_with": on,
        "ratio": on / off,
        "target_ratio": 1.25,
        "all_runs_us_per_trade": [[a.cpu_per_trade(), b.cpu_per_trade()] for a, b in pairs],
        "engine_trades": seen.get("analytics_trades"),
        "engine_dropped": seen.get("analytics_dropped"),
    }
    print(
        f"analytics stage (whole daemon, best of {len(pairs)}): {off:.2f} µs CPU per trade without, "
        f"{on:.2f} with the live engine = {on / off:.2f}x (target <= 1.25x); the engine took "
        f"{seen.get('analytics_trades')} trades, dropped {seen.get('analytics_dropped')}"
    )
    book_row = None
    if args.book_updates:
        per_update = books.cpu_s / books.frames * 1e6
        book_row = {
            "updates": books.frames,
            "updates_per_s": books.frames / books.wall_s,
            "cpu_us_per_update": per_update,
            "updates_per_s_per_core": 1e6 / per_update,
            "client_cpu_pct": 100 * books.cpu_s / books.wall_s,
        }
        print(
            f"books: binance spot depth@100ms at full speed, decode + official algorithm checks: "
            f"{book_row['updates_per_s']:,.0f} updates/s ({book_row['client_cpu_pct']:.0f}% client CPU), "
            f"{per_update:.2f} µs CPU per update = "
            f"{book_row['updates_per_s_per_core']:,.0f} updates/s per core"
        )
    decode_rows = None
    if args.decode_frames:
        decode_rows = decode_bench.run(args.decode_frames, max(1, args.repeat))
        print(
            f"decode per venue ({args.decode_frames} frames each, best of {max(1, args.repeat)}, CPU time):"
        )
        decode_bench.print_rows(decode_rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "market": market,
                    "frames": n,
                    "stages": rows,
                    "analytics": analytics_row,
                    "books": book_row,
                    "decode": decode_rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
