"""`marketflow.client` from trio and from asyncio, and `marketflow tail`, against a real nats-server: what a
collector published comes back as the same records, decimals exact."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal

import msgspec
import trio

from marketflow.analytics.candles import Candle
from marketflow.client import Record, subscribe
from marketflow.config import NatsConfig
from marketflow.model import BookUpdate, DerivativesTick, Liquidation, Ticker, Trade
from marketflow.nats.collect import NatsTradeStore
from marketflow.nats.link import NatsLink
from marketflow.nats.market_schema import (
    DerivativesUpdate,
    TickerUpdate,
    pack_candle,
    pack_derivatives,
    pack_liquidation,
    pack_ticker,
)
from marketflow.nats.schema import pack_book, subject
from marketflow.nats.server import NatsServer
from marketflow.pipeline.market_data import Quote

TRADES = [
    Trade(
        "bybit",
        "BTC-USDT",
        str(100 + i),
        Decimal("65114.20"),
        Decimal(f"0.00{i + 1}0"),
        "buy",
        1_000 + i,
        2_000,
    )
    for i in range(7)
] + [Trade("bybit", "ETH-USDT", "9", Decimal("3000.5"), Decimal("1E-8"), "sell", 5, 6)]


async def publish(server: NatsServer) -> None:
    store = NatsTradeStore(NatsLink(NatsConfig(servers=(server.url,)), "test"))
    await store.open()
    try:
        assert await store.write_trades(TRADES) == len(TRADES)
        assert await store.write_trades(TRADES) == 0  # the same chunk again: JetStream drops it
    finally:
        await store.close()


async def take(n: int, server: NatsServer, kind: str, symbol: str, exchange: str = "bybit") -> list[Record]:
    out: list[Record] = []
    async with subscribe([server.url], kind, exchange, symbol, deliver="all") as feed:
        async for record in feed:
            out.append(record)
            if len(out) == n:
                return out
    raise AssertionError("the feed ended")


async def test_trio_and_asyncio_readers_get_the_published_trades_exactly(nats_server: NatsServer) -> None:
    with trio.fail_after(30):
        await publish(nats_server)
        from_trio = await take(7, nats_server, "trades", "BTC-USDT")
        from_asyncio = await trio.to_thread.run_sync(asyncio.run, take(8, nats_server, "trades", "*"))
    assert from_trio == TRADES[:7]
    assert from_asyncio == TRADES
    assert all(
        isinstance(t, Trade) and str(t.amount) == str(o.amount)
        for t, o in zip(from_asyncio, TRADES, strict=True)
    )


async def test_book_messages_come_back_as_snapshots(nats_server: NatsServer) -> None:
    link = NatsLink(NatsConfig(servers=(nats_server.url,)), "test")
    bids = [(Decimal("99.50"), Decimal("2")), (Decimal("99"), Decimal("0.10"))]
    asks = [(Decimal("100.0"), Decimal("1.5"))]
    with trio.fail_after(30):
        await link.open()
        try:
            payload = pack_book("bybit", "BTC-USDT", 42, 7, 8, bids, asks)
            await link.publish_core([(subject("marketflow", "book", "bybit", "BTC-USDT"), payload)])
            [book] = await take(1, nats_server, "book", "BTC-USDT")
        finally:
            await link.close()
    assert book == BookUpdate("bybit", "BTC-USDT", True, 42, 42, None, bids, asks, 7, 8)


async def test_tail_prints_json_lines_with_exact_decimals(nats_server: NatsServer) -> None:
    with trio.fail_after(60):
        await publish(nats_server)
        command = [sys.executable, "-m", "marketflow", "tail", "trades", "bybit", "btc-usdt"]
        command += ["--servers", nats_server.url, "--deliver", "all", "--count", "3"]
        done = await trio.run_process(command, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    assert done.returncode == 0, done.stdout.decode()
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [(r["id"], r["price"], r["amount"]) for r in lines] == [
        (t.id, str(t.price), str(t.amount)) for t in TRADES[:3]
    ]


TICKER = Ticker(
    "okx",
    "BTC-USDT-PERP",
    10,
    11,
    Decimal("65000.10"),
    Decimal("1.500"),
    Decimal("65000.2"),
    None,
    Decimal("65000.15"),
    Decimal("1E+3"),
    snapshot=True,
)
QUOTES = [Quote("okx", "BTC-USDT-PERP", 9, Decimal("65000.10"), Decimal("1.500"), Decimal("65000.2"), None)]
STATE = DerivativesTick(
    "okx",
    "BTC-USDT-PERP",
    20,
    21,
    Decimal("65001.0"),
    None,
    Decimal("-0.000125"),
    1_800_000_000_000_000,
    Decimal("12345.678"),
    None,
    snapshot=True,
)
SAMPLES = [msgspec.structs.replace(STATE, ts=19, mark_price=Decimal("65000.9")), STATE]
LIQUIDATION = Liquidation(
    "okx", "BTC-USDT-PERP", "1700000000000:sell:65000.1:3", "sell", Decimal("65000.1"), Decimal("3"), 30, 31
)
CANDLE = Candle(
    "okx",
    "BTC-USDT-PERP",
    "1m",
    60_000_000,
    Decimal("1.10"),
    Decimal("2"),
    Decimal("1.0"),
    Decimal("1.5"),
    Decimal("3.000"),
    Decimal("1"),
    Decimal("2.000"),
    4,
    Decimal("1.4333333333333333333333333333"),
)


async def test_ticker_derivatives_liquidations_and_candles_come_back_exactly_and_tail_prints_them(
    nats_server: NatsServer,
) -> None:
    link = NatsLink(NatsConfig(servers=(nats_server.url,)), "test")
    where = ("okx", "BTC-USDT-PERP")
    with trio.fail_after(60):
        await link.open()
        try:
            messages = []
            for kind, (payload, msg_id) in (
                ("ticker", pack_ticker(TICKER, QUOTES)),
                ("derivatives", pack_derivatives(STATE, SAMPLES)),
                ("liquidations", pack_liquidation(LIQUIDATION)),
                ("candles", pack_candle(CANDLE)),
            ):
                messages.append((subject("marketflow", kind, *where), payload, msg_id))
            assert await link.publish_acked(messages) == [False] * 4
            assert await link.publish_acked(messages) == [True] * 4  # same ids: kept once
        finally:
            await link.close()
        got = {
            kind: await take_from(nats_server, kind)
            for kind in ("ticker", "derivatives", "liquidations", "candles")
        }
        command = [sys.executable, "-m", "marketflow", "tail", "ticker", "okx", "btc-usdt-perp"]
        command += ["--servers", nats_server.url, "--count", "1"]
        done = await trio.run_process(command, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    assert got["ticker"] == TickerUpdate(TICKER, QUOTES)
    assert got["derivatives"] == DerivativesUpdate(STATE, SAMPLES)
    assert got["liquidations"] == LIQUIDATION
    assert got["candles"] == CANDLE
    assert str(got["ticker"].ticker.volume_24h) == "1E+3"  # type: ignore[union-attr]
    assert str(got["candles"].vwap) == "1.4333333333333333333333333333"  # type: ignore[union-attr]
    assert done.returncode == 0, done.stdout.decode()
    [line] = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert line["ticker"]["bid"] == "65000.10" and line["ticker"]["ask_size"] is None  # the newest state
    assert line["quotes"][0]["bid_size"] == "1.500"


async def take_from(server: NatsServer, kind: str) -> Record:
    [record] = await take(1, server, kind, "BTC-USDT-PERP", exchange="okx")
    return record
