"""Collect, store and serve as separate daemons over one real nats-server (in this process, so their
statistics can be read): every trade stored once, the serving daemon's analytics and books equal to what a
single-process daemon computes from the same simulator tape."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from marketflow.config import Config
from marketflow.daemon import Daemon
from marketflow.nats.server import NatsServer
from marketflow.sim import SimConfig, SimServer, SimTrade
from tests.nats.conftest import with_nats
from tests.pg import PgCluster, shared_cluster
from tests.test_pg_end_to_end import expected_rows, pg_config, wait_all_stored, wait_until

SYMBOLS = (
    ("spot", "BTC-USDT"),
    ("spot", "ETH-USDT"),
    ("linear", "BTC-USDT-PERP"),
    ("linear", "ETH-USDT-PERP"),
)


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


def candle_counts(daemon: Daemon) -> dict[str, Any]:
    """Every 1m candle of every symbol, from the live engine (never from storage)."""
    engine = daemon.analytics
    assert engine is not None
    return {sym: engine.candles("bybit", sym, "1m", 0, None, 1000) for _, sym in SYMBOLS}


def with_books(config: Config) -> Config:
    return attrs.evolve(
        config, feeds=tuple(attrs.evolve(f, channels=("trades", "book")) for f in config.feeds)
    )


def levels(side: list[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[format(p, "f"), format(q, "f")] for p, q in side]


def _symbol(t: SimTrade) -> str:
    return t.symbol.removesuffix("USDT") + "-USDT" + ("-PERP" if t.category == "linear" else "")


def analysed(daemon: Daemon) -> int:
    assert daemon.analytics is not None
    return daemon.analytics.statistics().trades


async def reference_candles(tmp_path: Path, seed: int, max_frames: int) -> dict[str, Any]:
    """The same tape through one single-process daemon (no NATS)."""
    sim = SimServer(SimConfig(seed=seed, rate=200, max_frames=max_frames))
    url = shared_cluster().create_database()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(pg_config(tmp_path / "single", sim, url, flush_interval_s=0.05))
        await nursery.start(daemon.run)
        await wait_all_stored(shared_cluster(), url, sim)
        await wait_until(lambda: analysed(daemon) >= len(sim.delivered_trades()))
        counts = candle_counts(daemon)
        await daemon.stop()
        nursery.cancel_scope.cancel()
    return counts


async def test_collect_store_serve_apart_store_each_trade_once_and_serve_what_one_process_computes(
    tmp_path: Path, pg_cluster: PgCluster, nats_server: NatsServer
) -> None:
    seed, frames = 7, 150
    sim = SimServer(SimConfig(seed=seed, rate=200, max_frames=frames))
    url = pg_cluster.create_database()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            base = with_books(pg_config(tmp_path / "collect", sim, url, flush_interval_s=0.05))
            collect = Daemon(with_nats(base, [nats_server], ("collect",)))
            store = Daemon(with_nats(pg_config(tmp_path / "store", sim, url), [nats_server], ("store",)))
            serve = Daemon(
                with_nats(with_books(pg_config(tmp_path / "serve", sim, url)), [nats_server], ("serve",))
            )
            await nursery.start(store.run)
            await nursery.start(serve.run)
            await wait_until(lambda: serve.actors["nats_serve"].statistics().state == "running")
            await nursery.start(collect.run)
            rows = await wait_all_stored(pg_cluster, url, sim)
            delivered = sim.delivered_trades()
            await wait_until(lambda: analysed(serve) >= len(delivered))
            served = candle_counts(serve)
            # The serving daemon answers over HTTP for symbols it does not collect: books mirror the
            # collector's (the simulator stopped, so they no longer change), candles are its live ones.
            assert serve.http is not None and serve.http.url is not None
            async with httpx.AsyncClient(base_url=serve.http.url) as client:
                for _, symbol in SYMBOLS:
                    # Until the simulator's book topic stopped too (max_frames) and the last book arrived.
                    while True:
                        own = collect.books.view("bybit", symbol)
                        book = (await client.get(f"/book/bybit/{symbol}")).json()
                        assert own is not None and own.status == book["status"] == "synced"
                        if book["bids"] == levels(own.bids) and book["asks"] == levels(own.asks):
                            break
                        await trio.sleep(0.1)
                    candles = await client.get("/candles", params={"exchange": "bybit", "symbol": symbol})
                    assert candles.status_code == 200
                    total = sum(int(c["trades"]) for c in candles.json()["candles"])
                    assert total == sum(1 for t in delivered if _symbol(t) == symbol)
            for daemon in (collect, store, serve):
                await daemon.stop()
            nursery.cancel_scope.cancel()
    assert [key for key, n in Counter(r[:3] for r in rows).items() if n > 1] == []
    assert sorted(rows) == sorted(expected_rows(delivered))
    assert served == await reference_candles(tmp_path, seed, frames)
