"""Collect, store and serve as separate daemons over one real nats-server (in this process, so their
statistics can be read): every trade stored once, the serving daemon's analytics and books equal to what a
single-process daemon computes from the same simulator tape."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path

import attrs
import httpx
import httpx2
import pytest
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from marketflow.config import Config
from marketflow.daemon import Daemon
from marketflow.nats.server import NatsServer
from marketflow.sim import SimConfig, SimServer
from tests.nats.conftest import SYMBOLS, as_trade, candles_of, single_process_candles, with_nats
from tests.pg import PgCluster, shared_cluster
from tests.test_pg_end_to_end import expected_rows, pg_config, wait_all_stored, wait_until


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


def with_books(config: Config) -> Config:
    return attrs.evolve(
        config, feeds=tuple(attrs.evolve(f, channels=("trades", "book")) for f in config.feeds)
    )


def levels(side: list[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[format(p, "f"), format(q, "f")] for p, q in side]


def analysed(daemon: Daemon) -> int:
    assert daemon.analytics is not None
    return daemon.analytics.statistics().trades


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
            assert serve.analytics is not None
            served = candles_of(serve.analytics)
            # The serving daemon answers over HTTP for symbols it does not collect: books mirror the
            # collector's (the simulator stopped, so they no longer change), candles are its live ones.
            assert serve.http is not None and serve.http.url is not None
            async with httpx.AsyncClient(base_url=serve.http.url) as client:
                for symbol in SYMBOLS:
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
                    assert total == sum(1 for t in delivered if as_trade(t).symbol == symbol)
            # MCP answers from the same views: the collector's book (once the simulator's book topic stopped
            # too), the live candles.
            async with httpx2.AsyncClient(timeout=10) as http:
                transport = streamable_http_client(serve.http.url + "/mcp", http_client=http)
                async with Client(transport, mode="auto") as mcp:
                    while True:
                        book_call = await mcp.call_tool(
                            "get_orderbook", {"exchange": "bybit", "symbol": "BTC-USDT"}
                        )
                        own = collect.books.view("bybit", "BTC-USDT")
                        assert own is not None and book_call.structured_content is not None
                        bids = book_call.structured_content["bids"]  # its default depth
                        if bids and bids == levels(own.bids)[: len(bids)]:
                            break
                        await trio.sleep(0.1)
                    candle_call = await mcp.call_tool(
                        "get_candles", {"exchange": "bybit", "symbol": "ETH-USDT"}
                    )
            assert candle_call.structured_content is not None
            mcp_total = sum(int(c["trades"]) for c in candle_call.structured_content["candles"])
            assert mcp_total == sum(1 for t in delivered if as_trade(t).symbol == "ETH-USDT")
            for daemon in (collect, store, serve):
                await daemon.stop()
            nursery.cancel_scope.cancel()
    assert [key for key, n in Counter(r[:3] for r in rows).items() if n > 1] == []
    assert sorted(rows) == sorted(expected_rows(delivered))
    assert served == single_process_candles(delivered, serve.config)


async def test_one_daemon_with_every_role_on_nats_stores_and_counts_each_trade_once(
    tmp_path: Path, pg_cluster: PgCluster, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=9, rate=200, max_frames=100))
    url = pg_cluster.create_database()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(
                with_nats(pg_config(tmp_path, sim, url), [nats_server], ("collect", "store", "serve"))
            )
            await nursery.start(daemon.run)
            await wait_until(lambda: daemon.actors["nats_serve"].statistics().state == "running")
            rows = await wait_all_stored(pg_cluster, url, sim)
            delivered = sim.delivered_trades()
            await wait_until(lambda: analysed(daemon) >= len(delivered))
            assert daemon.analytics is not None
            served = candles_of(daemon.analytics)
            await daemon.stop()
            nursery.cancel_scope.cancel()
    assert sorted(rows) == sorted(expected_rows(delivered))
    assert analysed(daemon) == len(delivered)
    assert served == single_process_candles(delivered, daemon.config)
