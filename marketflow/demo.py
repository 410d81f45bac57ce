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
from marketflow.exchanges import VENUES
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.server import MARKETS as SIM_MARKETS
from marketflow.sim.walk import asset_of

DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT")
DEMO_MARKETS = tuple(
    (exchange, market)
    for exchange, venue in VENUES.items()
    for market in venue.markets
    if market in SIM_MARKETS.get(exchange, ())
)
"""Every venue market the simulator speaks."""


def demo_config(base: Config, sim: SimServer) -> Config:
    """`base` with its feeds replaced by one feed per venue market on the simulator, with every channel the
    market offers (trades, book, and ticker, derivatives, liquidations where there are)."""
    db = Path(base.daemon.state_dir) / "demo.db"
    feeds = []
    for exchange, market in DEMO_MARKETS:
        venue = VENUES[exchange]
        ws_url, rest_url = sim.urls(exchange, market)
        feeds.append(
            FeedConfig(
                exchange=exchange,
                market=market,
                symbols=tuple(venue.normalize_symbol(market, n) for n in sim.listed(exchange, market)),
                channels=venue.markets[market].channels,  # everything the market offers
                book_depth=venue.markets[market].default_book_depth,
                ws_url=ws_url,
                rest_url=rest_url,
            )
        )
    storage = attrs.evolve(base.storage, url=f"sqlite:///{db}")
    return attrs.evolve(base, feeds=tuple(feeds), storage=storage)


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
        first = config.feeds[0]
        print(
            f"marketflow demo: HTTP API at {url}  (try {url}/book/{first.exchange}/{first.symbols[0]})",
            flush=True,
        )
        # It opens on one asset across every venue (SPEC §15); the market list switches to one market.
        asset = asset_of(DEMO_SYMBOLS[0])
        print(
            f"  dashboard at {url}/dashboard#asset/{asset}/1m  (all venues; open it in a browser)", flush=True
        )
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
