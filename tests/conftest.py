"""Shared fixtures: a daemon configuration pointed at an in-process simulator."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs
import trio
from hypothesis import settings

from marketflow.config import Config, FeedConfig, default_config
from marketflow.sim import SimServer

# Property tests check what they compute, never how long an example takes: Hypothesis's default 200 ms
# wall-clock deadline fails correct examples whenever a busy machine stalls the process.
settings.register_profile("marketflow", deadline=None)
settings.load_profile("marketflow")


def sim_config(
    tmp_path: Path, sim: SimServer, *, markets: tuple[str, ...] = ("spot", "linear"), **storage: object
) -> Config:
    """Default config with Bybit feeds on the simulator, SQLite in tmp_path, fast supervisor backoff."""
    base = default_config(env={})
    feeds = tuple(
        FeedConfig(
            exchange="bybit",
            market=market,
            symbols=("BTC-USDT-PERP", "ETH-USDT-PERP") if market == "linear" else ("BTC-USDT", "ETH-USDT"),
            ws_url=sim.bybit_ws_url(market),
            rest_url=sim.http_url,
            channels=("trades",),
            stale_timeout_s=2.0,
        )
        for market in markets
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, **{"url": f"sqlite:///{tmp_path}/marketflow.db", **storage}),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        feeds=feeds,
    )


def stored_rows(path: Path) -> list[tuple[str, str, str, str, str, str, int]]:
    """Every stored trade; none while the daemon has not created the schema yet (tests poll this)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT exchange, symbol, id, price, amount, side, ts FROM trades").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


async def wait_for(condition: Callable[[], bool], interval: float = 0.02) -> None:
    """Poll a condition about state the daemon exposes only as counters; the caller bounds the time."""
    while not condition():  # noqa: ASYNC110 - no event exists for counters reaching a value
        await trio.sleep(interval)
