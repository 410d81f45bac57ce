"""Faults on the market-data kinds over real nats-servers: a hot pair of collectors stores and serves each
liquidation once; bad payloads on the new subjects are refused with a reason (logged, counted) and nothing
stops; two publishers of one message id on a replicas=3 cluster get JetStream's 409 "duplicate message id is
in process" (err_code 10158), which counts as stored."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from marketflow.config import NatsConfig
from marketflow.daemon import Daemon
from marketflow.model import Liquidation, MarketData
from marketflow.nats.link import NatsLink
from marketflow.nats.market_schema import pack_liquidation
from marketflow.nats.server import NatsServer
from marketflow.nats.store import MarketStoreStatistics
from marketflow.sim import SimConfig, SimServer
from tests.nats.conftest import with_nats
from tests.nats.test_market import SYMBOL, market_config, rows, tap
from tests.test_pg_end_to_end import wait_until

LIQUIDATIONS_SQL = "SELECT exchange, symbol, id, side, price, amount, ts FROM liquidations"


def store_stats(daemon: Daemon) -> MarketStoreStatistics:
    stats = daemon.actors["nats_store_market"].statistics()
    assert isinstance(stats, MarketStoreStatistics)
    return stats


def liquidations_of(records: list[MarketData]) -> set[tuple[str, str, str]]:
    return {(r.exchange, r.symbol, r.id) for r in records if isinstance(r, Liquidation)}


async def test_hot_pair_of_collectors_stores_and_serves_each_liquidation_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=12, rate=20, book_rate=40))
    taps: list[list[MarketData]] = [[], []]
    store_db = tmp_path / "store" / "marketflow.db"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            store = Daemon(with_nats(market_config(tmp_path / "store", sim), [nats_server], ("store",)))
            serve = Daemon(with_nats(market_config(tmp_path / "serve", sim), [nats_server], ("serve",)))
            pair = [
                Daemon(with_nats(market_config(tmp_path / f"c{i}", sim), [nats_server], ("collect",)))
                for i in range(2)
            ]
            await nursery.start(store.run)
            await nursery.start(serve.run)
            for collector, records in zip(pair, taps, strict=True):
                nursery.start_soon(tap, collector, records)
                await nursery.start(collector.run)
            # Both connected: from here on both see every liquidation the simulator sends.
            await wait_until(lambda: all(len(liquidations_of(t)) >= 1 for t in taps))
            first = len(liquidations_of(taps[0]) | liquidations_of(taps[1]))
            await wait_until(lambda: len(liquidations_of(taps[0]) & liquidations_of(taps[1])) >= first + 4)
            for collector in pair:
                await collector.stop()
            sent = liquidations_of(taps[0]) | liquidations_of(taps[1])
            await wait_until(lambda: len(rows(store_db, LIQUIDATIONS_SQL)) == len(sent), interval=0.1)
            assert serve.http is not None and serve.http.url is not None
            params = {"exchange": "bybit", "symbol": SYMBOL, "limit": 1000}
            async with httpx.AsyncClient(base_url=serve.http.url) as client:
                while (await client.get("/liquidations", params=params)).json()["count"] < len(sent):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                served = (await client.get("/liquidations", params=params)).json()
            stats = store_stats(store)
            published = [c.actors["nats_market"].statistics() for c in pair]
            await serve.stop()
            await store.stop()
            nursery.cancel_scope.cancel()
    both = liquidations_of(taps[0]) & liquidations_of(taps[1])
    assert len(both) >= 4  # the pair really overlapped
    stored = rows(store_db, LIQUIDATIONS_SQL)
    assert {r[:3] for r in stored} == sent and len(stored) == len(sent)
    # Each collector published its own, yet JetStream kept one message per liquidation (its id).
    assert all(p.liquidations >= len(both) for p in published)
    assert stats.liquidations == len(sent)
    assert (
        served["count"]
        == len(sent)
        == len({(x["ts"], x["price"], x["amount"]) for x in served["liquidations"]})
    )


BAD = [
    ("liquidations", b"not json", "not a liquidations message"),
    (
        "liquidations",
        b'{"v": 2, "exchange": "bybit", "symbol": "BTC-USDT-PERP", "liquidations": []}',
        "version 2",
    ),
    (
        "liquidations",
        b'{"v": 1, "exchange": "bybit", "symbol": "ETH-USDT-PERP", "liquidations": []}',
        "on the subject of bybit BTC-USDT-PERP",
    ),
    (
        "liquidations",
        b'{"v": 1, "exchange": "bybit", "symbol": "BTC-USDT-PERP",'
        b' "liquidations": [["x1", "sell", "NaN", "1", 1, 2]]}',
        "not a finite decimal",
    ),
    (
        "ticker",
        b'{"v": 1, "exchange": "bybit", "symbol": "BTC-USDT-PERP",'
        b' "ticker": [1, 2, "1", "1", "2", "1", null], "quotes": []}',
        "not a ticker message",
    ),
    ("derivatives", b'{"v": 1, "exchange": "bybit", "symbol": "BTC-USDT-PERP"}', "not a derivatives message"),
]


async def test_bad_payloads_on_the_new_subjects_are_refused_with_a_reason_and_nothing_stops(
    tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimServer(SimConfig(seed=1))
    store_db = tmp_path / "store" / "marketflow.db"
    good = Liquidation("bybit", SYMBOL, "ok-1", "buy", Decimal("65000.5"), Decimal("0.010"), 1_000_000, 2)
    caplog.set_level(logging.WARNING, logger="marketflow.nats")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            store = Daemon(with_nats(market_config(tmp_path / "store", sim), [nats_server], ("store",)))
            serve = Daemon(with_nats(market_config(tmp_path / "serve", sim), [nats_server], ("serve",)))
            await nursery.start(store.run)
            await nursery.start(serve.run)
            await wait_until(lambda: serve.actors["nats_serve"].statistics().state == "running")
            link = NatsLink(NatsConfig(servers=(nats_server.url,)), "test")
            await link.open()
            try:
                messages = [
                    (f"marketflow.{kind}.bybit.{SYMBOL}", payload, f"bad-{i}")
                    for i, (kind, payload, _) in enumerate(BAD)
                ]
                payload, msg_id = pack_liquidation(good)
                messages.append((f"marketflow.liquidations.bybit.{SYMBOL}", payload, msg_id))
                await link.publish_acked(messages)
            finally:
                await link.close()
            await wait_until(lambda: len(rows(store_db, LIQUIDATIONS_SQL)) == 1)
            await wait_until(lambda: serve.actors["nats_serve"].statistics().market_messages == 1)
            serve_stats = serve.actors["nats_serve"].statistics()
            stats = store_stats(store)
            assert serve.http is not None and serve.http.url is not None
            async with httpx.AsyncClient(base_url=serve.http.url) as client:
                answer = await client.get("/liquidations", params={"exchange": "bybit", "symbol": SYMBOL})
            await serve.stop()
            await store.stop()
            nursery.cancel_scope.cancel()
    assert rows(store_db, LIQUIDATIONS_SQL) == [
        ("bybit", SYMBOL, "ok-1", "buy", "65000.5", "0.010", 1_000_000)
    ]
    assert stats.malformed == serve_stats.malformed == len(BAD)
    assert stats.state == serve_stats.state == "running"
    assert answer.json()["count"] == 1 and answer.json()["liquidations"][0]["price"] == "65000.5"
    for kind, _, reason in BAD:  # the store logs an error, the serve role a warning, each with the cause
        for level in (logging.ERROR, logging.WARNING):
            assert any(
                r.levelno == level
                and reason in str(getattr(r, "error", ""))
                and str(getattr(r, "subject", "")).startswith(f"marketflow.{kind}.")
                for r in caplog.records
            ), (level, reason)


async def test_two_publishers_of_one_message_id_on_three_replicas_store_it_once(
    nats_cluster: list[NatsServer],
) -> None:
    """The second publisher's copy arrives while the first is replicated: JetStream answers 409 err_code
    10158 (seen for real here, counted by the link), which is a stored message, not a failure."""
    config = NatsConfig(servers=tuple(s.url for s in nats_cluster), stream_replicas=3)
    links = [
        NatsLink(attrs.evolve(config, servers=(s.url,)), f"p{i}") for i, s in enumerate(nats_cluster[:2])
    ]
    total = 0
    with trio.fail_after(60):
        for link in links:
            await link.open()
        try:
            while sum(link.in_process_duplicates for link in links) == 0:
                messages = [
                    (f"marketflow.liquidations.bybit.{SYMBOL}", b"{}", f"round{total}-{i}")
                    for i in range(1000)
                ]
                answers: dict[int, list[bool]] = {}

                async def publish(
                    i: int, link: NatsLink, batch: list[tuple[str, bytes, str]], into: dict[int, list[bool]]
                ) -> None:
                    into[i] = await link.publish_acked(batch)

                async with trio.open_nursery() as nursery:
                    for i, link in enumerate(links):
                        nursery.start_soon(publish, i, link, messages, answers)
                # Every message stored by exactly one of the two; the other's copy was a duplicate.
                assert [a != b for a, b in zip(answers[0], answers[1], strict=True)] == [True] * len(messages)
                total += len(messages)
            held = await links[0].stream_count("liquidations", "marketflow.liquidations.>")
        finally:
            for link in links:
                await link.close()
    assert held == total
    assert sum(link.in_process_duplicates for link in links) > 0


async def test_nats_down_mid_stream_collector_keeps_its_rows_and_sends_them_once_back(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=12, rate=20, book_rate=40))
    records: list[MarketData] = []
    store_db = tmp_path / "store" / "marketflow.db"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            store = Daemon(with_nats(market_config(tmp_path / "store", sim), [nats_server], ("store",)))
            collect = Daemon(with_nats(market_config(tmp_path / "collect", sim), [nats_server], ("collect",)))
            await nursery.start(store.run)
            nursery.start_soon(tap, collect, records)
            await nursery.start(collect.run)
            await wait_until(lambda: len(rows(store_db, LIQUIDATIONS_SQL)) >= 2, interval=0.1)
            nats_server.kill()
            try:
                before = len(liquidations_of(records))
                await wait_until(lambda: collect.actors["nats_market"].statistics().state == "retrying")
                # A round with nothing to send proves nothing about NATS: the publisher stays "retrying"
                # (it used to say "running", so /health flapped to healthy during the outage).
                publisher = collect.actors["nats_market"]
                assert await publisher._publish([]) and publisher.statistics().state == "retrying"
                await wait_until(lambda: len(liquidations_of(records)) >= before + 3)  # made while down
                health = collect.health()
            finally:
                nats_server.start()
            await nats_server.wait_ready()
            # Sent back while running: a stop before the publisher is through again would (rightly) spill
            # what it holds for the next start (tests/nats/test_market_spill.py): not this test's subject.
            await wait_until(lambda: collect.actors["nats_market"].statistics().state == "running")
            await collect.stop()
            sent = liquidations_of(records)
            await wait_until(lambda: len(rows(store_db, LIQUIDATIONS_SQL)) >= len(sent), interval=0.1)
            await store.stop()
            nursery.cancel_scope.cancel()
    assert health.status == "degraded" and health.problems["nats_market"].startswith("retrying: NATS")
    stored = rows(store_db, LIQUIDATIONS_SQL)
    assert len(stored) == len(sent) and {r[:3] for r in stored} == sent
    assert collect.actors["nats_market"].statistics().failures >= 1
