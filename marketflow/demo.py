"""`marketflow demo`: the exchange simulator and the daemon against it, offline, on this machine.

The daemon keeps the loaded configuration's daemon, storage-tuning and supervisor settings, but its feeds
point at the simulator and it stores into `<state_dir>/demo.db`, so demo trades never mix with real ones.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import attrs
import trio

from marketflow.config import Config, FeedConfig
from marketflow.daemon import Daemon
from marketflow.model import normalize_symbol
from marketflow.sim import SimConfig, SimServer

DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT")
DEMO_MARKETS = (("bybit", "spot"), ("bybit", "linear"), ("binance", "spot"), ("binance", "usdm"))


def demo_config(base: Config, sim: SimServer) -> Config:
    """`base` with its feeds replaced by Bybit and Binance feeds (trades and books) on the simulator."""
    db = Path(base.daemon.state_dir) / "demo.db"
    feeds = tuple(
        FeedConfig(
            exchange=exchange,
            market=market,
            symbols=tuple(normalize_symbol(n, perpetual=market in ("linear", "usdm")) for n in DEMO_SYMBOLS),
            channels=("trades", "book"),
            ws_url=sim.bybit_ws_url(market) if exchange == "bybit" else sim.binance_ws_base(market),
            rest_url=sim.http_url if exchange == "bybit" else sim.binance_rest_base(market),
        )
        for exchange, market in DEMO_MARKETS
    )
    storage = attrs.evolve(base.storage, url=f"sqlite:///{db}")
    return attrs.evolve(base, feeds=feeds, storage=storage)


def demo_simulator(rate: float, seed: int) -> SimServer:
    """The demo's exchange: it keeps no copy of what it sent (a demo may run for days; nobody asks)."""
    return SimServer(SimConfig(seed=seed, rate=rate, symbols=DEMO_SYMBOLS, record_delivered=False))


async def run_demo(base: Config, duration: float | None, rate: float, seed: int) -> None:
    """Run the simulator and the daemon until Ctrl-C or `duration` seconds, then stop cleanly."""
    sim = demo_simulator(rate, seed)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = demo_config(base, sim)
        daemon = Daemon(config)
        await nursery.start(daemon.run)
        db = config.storage.url.removeprefix("sqlite:///")
        url = None if daemon.http is None else daemon.http.url
        print(f"marketflow demo: HTTP API at {url}  (try {url}/book/bybit/BTC-USDT)", flush=True)
        print(f"  dashboard at {url}/dashboard  (open it in a browser)", flush=True)
        print(f"  simulator at {sim.http_url}", flush=True)
        for feed in config.feeds:
            print(f"  feed {feed.name:<14} {feed.ws_url}", flush=True)
        print(f"  storing into {db}", flush=True)
        print(
            "  Ctrl-C stops" + (f"; stopping by itself after {duration:g} s" if duration else ""), flush=True
        )
        try:
            with trio.move_on_after(duration if duration is not None else float("inf")):
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(config.daemon.shutdown_timeout_s):
                await daemon.stop()
            nursery.cancel_scope.cancel()
    rows = _count(db)
    print(f"marketflow demo: {rows} trades stored in {db}", flush=True)


def _count(db: str) -> int:
    try:
        conn = sqlite3.connect(db)
        try:
            return int(conn.execute("SELECT count(*) FROM trades").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
