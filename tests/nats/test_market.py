"""Tickers, derivatives and liquidations through NATS (collect → JetStream → store, and → serve) over a real
nats-server, against what one process makes of the same records: the collector's market-data bus is
tapped, and a fresh `LiveMarketData` (the single-process keeper's code) over every tapped record gives the
rows one process stores and the state it shows. Candles come back from the serve role's publisher."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import httpx2
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from marketflow.analytics.candles import Candle, candle_json
from marketflow.api import market_queries
from marketflow.api.market_queries import bar_fields, liquidation_json, sample_json
from marketflow.client import subscribe
from marketflow.config import Config, FeedConfig, NatsConfig
from marketflow.daemon import Daemon
from marketflow.model import DerivativesTick, Liquidation, MarketData
from marketflow.nats.link import NatsLink
from marketflow.nats.server import NatsServer
from marketflow.pipeline.market_data import LiveMarketData, Quote
from marketflow.runtime.bus import Overflow, receive_batches
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config
from tests.nats.conftest import with_nats
from tests.test_pg_end_to_end import wait_until

SYMBOL = "BTC-USDT-PERP"
CHANNELS = ("trades", "ticker", "derivatives", "liquidations")


def market_config(tmp_path: Path, sim: SimServer) -> Config:
    """Bybit linear BTC perpetual with every §12 channel, samples every 0.5 s, quotes stored; SQLite."""
    base = sim_config(tmp_path, sim, markets=(), flush_interval_s=0.05, store_quotes=True)
    ws, rest = sim.urls("bybit", "linear")
    feed = FeedConfig(
        exchange="bybit",
        market="linear",
        symbols=(SYMBOL,),
        channels=CHANNELS,
        ws_url=ws,
        rest_url=rest,
        stale_timeout_s=5.0,
    )
    return attrs.evolve(
        base, feeds=(feed,), derivatives=attrs.evolve(base.derivatives, sample_interval_s=0.5)
    )


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows read with sqlite3 (not with the code under test); none before the schema exists."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@attrs.frozen
class Reference:
    """What one process's keeper makes of `records`: the rows it stores, its live state."""

    live: LiveMarketData
    samples: list[DerivativesTick]  # one per instant, the newest version (the table upserts by ts)
    quotes: list[Quote]
    liquidations: list[Liquidation]


def reference(records: list[MarketData], interval_s: float) -> Reference:
    live = LiveMarketData(interval_s, store_quotes=True)
    emitted = live.apply(records)
    samples = {s.ts: s for s in [*emitted.samples, *live.flush()]}
    return Reference(live, sorted(samples.values(), key=lambda s: s.ts), emitted.quotes, emitted.liquidations)


def sample_rows(samples: list[DerivativesTick]) -> list[tuple[Any, ...]]:
    return [
        (
            s.exchange,
            s.symbol,
            s.ts,
            text(s.mark_price),
            text(s.index_price),
            text(s.funding_rate),
            s.next_funding_time,
            text(s.open_interest),
            text(s.open_interest_value),
        )
        for s in samples
    ]


async def tap(daemon: Daemon, into: list[MarketData]) -> None:
    """Every record the daemon's feeds put on its market-data bus, until the bus closes (its stop)."""
    subscription = daemon.market.bus.subscribe("test-tap", 10_000, Overflow.BLOCK)
    with subscription.receiver() as receiver:
        while True:
            try:
                batches = await receive_batches(receiver)
            except trio.EndOfChannel:
                return
            for batch in batches:
                into.extend(batch)


async def test_ticker_derivatives_liquidations_through_nats_store_and_serve_what_one_process_makes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=4, rate=20, book_rate=40))
    records: list[MarketData] = []
    store_db = tmp_path / "store" / "marketflow.db"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            collect = Daemon(with_nats(market_config(tmp_path / "collect", sim), [nats_server], ("collect",)))
            store = Daemon(with_nats(market_config(tmp_path / "store", sim), [nats_server], ("store",)))
            serve = Daemon(with_nats(market_config(tmp_path / "serve", sim), [nats_server], ("serve",)))
            nursery.start_soon(tap, collect, records)
            await nursery.start(store.run)
            await nursery.start(serve.run)
            await wait_until(lambda: serve.actors["nats_serve"].statistics().state == "running")
            await nursery.start(collect.run)
            await wait_until(
                lambda: (
                    len(rows(store_db, "SELECT id FROM liquidations")) >= 3
                    and len(rows(store_db, "SELECT ts FROM derivatives WHERE open_interest IS NOT NULL")) >= 4
                ),
                interval=0.1,
            )
            await collect.stop()  # its keeper flushes the last samples, its publisher sends them
            ref = reference(records, 0.5)
            assert ref.samples and ref.quotes and ref.liquidations
            derivatives_sql = (
                "SELECT exchange, symbol, ts, mark_price, index_price, funding_rate, next_funding_ts, "
                "open_interest, open_interest_value FROM derivatives ORDER BY ts"
            )
            await wait_until(
                lambda: rows(store_db, derivatives_sql) == sample_rows(ref.samples), interval=0.1
            )
            liquidations_sql = "SELECT exchange, symbol, id, side, price, amount, ts FROM liquidations"
            await wait_until(lambda: len(rows(store_db, liquidations_sql)) == len(ref.liquidations))
            stored_liquidations = rows(store_db, liquidations_sql)
            quotes_sql = "SELECT exchange, symbol, ts, bid, bid_size, ask, ask_size FROM quotes"
            await wait_until(lambda: len(rows(store_db, quotes_sql)) >= len(ref.quotes))
            stored_quotes = rows(store_db, quotes_sql)

            # The serving daemon collects nothing: its answers come from NATS and equal the collector's own.
            own_ticker = market_queries.ticker(collect.query, "bybit", SYMBOL)
            assert serve.http is not None and serve.http.url is not None
            params = {"exchange": "bybit", "symbol": SYMBOL}
            async with httpx.AsyncClient(base_url=serve.http.url) as client:
                while (await client.get(f"/ticker/bybit/{SYMBOL}")).json() != own_ticker:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # the collector's last state is on its way
                derivs = (await client.get("/derivatives", params={**params, "limit": 1000})).json()
                liqs = (await client.get("/liquidations", params={**params, "limit": 1000})).json()
                flow = (await client.get("/order-flow", params={**params, "interval": "1m"})).json()
            async with httpx2.AsyncClient(timeout=10) as http:
                transport = streamable_http_client(serve.http.url + "/mcp", http_client=http)
                async with Client(transport, mode="auto") as mcp:
                    mcp_ticker = await mcp.call_tool("get_ticker", params)
                    mcp_derivs = await mcp.call_tool("get_derivatives", {**params, "limit": 1000})
                    mcp_liqs = await mcp.call_tool("get_liquidations", {**params, "limit": 1000})
            await serve.stop()
            await store.stop()
            nursery.cancel_scope.cancel()

    # Stored: the rows one process writes, each once.
    assert sorted(stored_liquidations) == sorted(
        (x.exchange, x.symbol, x.id, x.side, str(x.price), str(x.amount), x.ts) for x in ref.liquidations
    )
    expected_quotes = [
        (q.exchange, q.symbol, q.ts, text(q.bid), text(q.bid_size), text(q.ask), text(q.ask_size))
        for q in ref.quotes
    ]
    assert sorted(stored_quotes) == sorted(expected_quotes)
    # Served: the live ticker, the samples and liquidations (newest first), the order-flow bar fields.
    assert own_ticker == market_queries.ticker(serve.query, "bybit", SYMBOL)
    assert own_ticker["mark_price"] is not None and own_ticker["bid"] is not None
    newest_first = sorted(ref.samples, key=lambda s: s.ts, reverse=True)
    assert derivs == {"rows": [sample_json(s) for s in newest_first]}
    by_time = sorted(ref.liquidations, key=lambda x: (x.ts, x.id), reverse=True)
    assert liqs == {"liquidations": [liquidation_json(x) for x in by_time], "count": len(by_time)}
    assert mcp_ticker.structured_content == own_ticker
    assert mcp_derivs.structured_content == derivs
    assert mcp_liqs.structured_content == liqs
    starts = [market_queries._start_us(bar["start"]) for bar in flow["bars"]]
    assert starts
    extra = bar_fields(starts, 60_000_000, ref.liquidations, ref.samples)
    assert [
        {k: bar[k] for k in ("liquidations_buy", "liquidations_sell", "oi_change")} for bar in flow["bars"]
    ] == extra
    assert any(e["oi_change"] is not None for e in extra)
    assert sum(Decimal(e["liquidations_buy"] or 0) + Decimal(e["liquidations_sell"] or 0) for e in extra) > 0


async def test_candles_of_two_serve_daemons_reach_the_stream_once_each(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=6, rate=100, max_frames=80))
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            collect = Daemon(with_nats(market_config(tmp_path / "collect", sim), [nats_server], ("collect",)))
            serves = [
                Daemon(with_nats(market_config(tmp_path / f"serve{i}", sim), [nats_server], ("serve",)))
                for i in range(2)
            ]
            for serve in serves:
                await nursery.start(serve.run)
                await wait_until(lambda s=serve: s.actors["nats_serve"].statistics().state == "running")
            await nursery.start(collect.run)

            def analysed(daemon: Daemon) -> int:
                assert daemon.analytics is not None
                return daemon.analytics.statistics().trades

            await wait_until(
                lambda: (
                    len(sim.delivered_trades()) >= 80
                    and all(analysed(s) == len(sim.delivered_trades()) for s in serves)
                ),
                interval=0.1,
            )
            await collect.stop()
            for serve in serves:  # each closes its open bars and publishes them
                await serve.stop()
            expected: dict[tuple[str, int], dict[str, Any]] = {}
            assert serves[0].analytics is not None
            for interval in serves[0].config.analytics.candle_intervals:
                for c in serves[0].analytics.candles("bybit", SYMBOL, interval, 0, None, 1000)["candles"]:
                    expected[interval, market_queries._start_us(c["start"])] = c
            assert expected
            link = NatsLink(NatsConfig(servers=(nats_server.url,)), "test")
            await link.open(create_streams=False)
            try:
                held = await link.stream_count("candles", f"marketflow.candles.bybit.{SYMBOL}")
            finally:
                await link.close()
            published: list[Candle] = []
            async with subscribe([nats_server.url], "candles", "bybit", SYMBOL, deliver="all") as feed:
                async for candle in feed:
                    assert isinstance(candle, Candle)
                    published.append(candle)
                    if len(published) == held:
                        break
            nursery.cancel_scope.cancel()
    # Both serve daemons published every candle; equal content has one message id, so JetStream kept one
    # (a corrected candle is a new version, kept beside the old one; its newest equals the engine's).
    assert len(published) == len(set(published))
    latest = {(c.interval, c.start): c for c in published}
    assert {key: candle_json(c) for key, c in latest.items()} == expected
    assert all(s.actors["nats_candles"].statistics().candles >= len(expected) for s in serves)


def test_a_daemon_that_collects_and_serves_keeps_its_own_market_state_and_mirrors_the_rest(
    tmp_path: Path,
) -> None:
    sim = SimServer(SimConfig())
    base = market_config(tmp_path, sim)
    server = NatsServer("n1", tmp_path)  # never started: only the daemon's wiring is looked at
    both = Daemon(with_nats(base, [server], ("collect", "serve")))
    serving = Daemon(with_nats(base, [server], ("serve",)))
    assert both._collects_market("bybit", SYMBOL)
    assert not both._collects_market("bybit", "ETH-USDT-PERP") and not both._collects_market("okx", SYMBOL)
    assert not serving._collects_market("bybit", SYMBOL)  # it collects nothing: everything is mirrored
    trades_only = attrs.evolve(base, feeds=(attrs.evolve(base.feeds[0], channels=("trades",)),))
    assert not Daemon(with_nats(trades_only, [server], ("collect", "serve")))._collects_market(
        "bybit", SYMBOL
    )
