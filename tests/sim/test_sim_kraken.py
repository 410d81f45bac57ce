"""The simulator's Kraken v2 side, checked over real sockets with an independent client (trio-websocket).

Everything runs on 127.0.0.1 port 0 under `trio.fail_after`; time-based behaviour (heartbeats, the REST
rate limit, the feed kept alive by heartbeats) runs under `autojump_clock` with exact virtual times. The
checksum is recomputed here from the frames themselves (`json` with `parse_float=Decimal`, `format()` at
the instrument's precision, zlib), independently of marketflow's book code.
"""

from __future__ import annotations

import argparse
import json
import re
import zlib
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from marketflow.exchanges import kraken as kraken_venue
from marketflow.model import RawFrames
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.runtime.bus import Bus
from marketflow.sim import Faults, SimConfig, SimServer, add_arguments, run_from_args, sim_config_from_args


async def start(nursery: trio.Nursery, **config: Any) -> SimServer:
    server = SimServer(SimConfig(**config))
    await nursery.start(server.run)
    return server


def ws_url(server: SimServer) -> str:
    return server.urls("kraken", "spot")[0]


def parse(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


async def send(ws: WebSocketConnection, method: str, req_id: int, **params: Any) -> None:
    await ws.send_message(json.dumps({"method": method, "params": params, "req_id": req_id}))


async def replies(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` replies (they carry `method`), skipping data."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        message = parse(await ws.get_message())
        if "method" in message:
            out.append(message)
    return out


async def channel(ws: WebSocketConnection, name: str, count: int) -> list[tuple[dict[str, Any], str]]:
    """The next `count` messages of a channel, parsed and raw."""
    out = []
    while len(out) < count:
        raw = await ws.get_message()
        message = parse(raw)
        if message.get("channel") == name:
            out.append((message, str(raw)))
    return out


class ClientBook:
    """A client book as Kraken's guide says: apply, truncate to the depth, CRC32 of the top 10."""

    def __init__(self, depth: int, price_precision: int, qty_precision: int) -> None:
        self.depth = depth
        self.pp = price_precision
        self.qp = qty_precision
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.truncated = 0

    def apply(self, data: dict[str, Any], snapshot: bool) -> None:
        if snapshot:
            self.bids, self.asks = {}, {}
        for side, levels in ((self.bids, data["bids"]), (self.asks, data["asks"])):
            for level in levels:
                if level["qty"] == 0:
                    side.pop(level["price"], None)
                else:
                    side[level["price"]] = level["qty"]
        for side, best_first in ((self.bids, True), (self.asks, False)):
            for price in sorted(side, reverse=best_first)[self.depth :]:
                del side[price]
                self.truncated += 1

    def checksum(self) -> int:
        def text(value: Decimal, precision: int) -> str:
            return format(value, f".{precision}f").replace(".", "").lstrip("0")

        asks = [text(p, self.pp) + text(self.asks[p], self.qp) for p in sorted(self.asks)[:10]]
        bids = [text(p, self.pp) + text(self.bids[p], self.qp) for p in sorted(self.bids, reverse=True)[:10]]
        return zlib.crc32("".join(asks + bids).encode())


async def test_acks_per_symbol_refusals_name_the_pair_and_ping_pongs(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(server)) as ws:
            (status,) = [m for m, _ in await channel(ws, "status", 1)]
            assert status["data"][0]["system"] == "online" and status["data"][0]["api_version"] == "v2"
            await send(ws, "subscribe", 1, channel="trade", symbol=["BTC/USD", "XBT/USD", "ETH/USD"])
            acks = await replies(ws, 3)
            assert [(a["success"], a.get("result", {}).get("symbol"), a["req_id"]) for a in acks] == [
                (True, "BTC/USD", 1),
                (False, None, 1),
                (True, "ETH/USD", 1),
            ]
            assert (
                acks[1]["error"] == "Currency pair not supported XBT/USD" and acks[1]["symbol"] == "XBT/USD"
            )
            await ws.send_message('{"method":"ping","req_id":42}')
            (pong,) = await replies(ws, 1)
            assert (pong["method"], pong["req_id"]) == ("pong", 42) and "time_out" in pong
            await send(ws, "subscribe", 2, channel="book", symbol=["BTC/USD"], depth=15)
            (refused,) = await replies(ws, 1)
            assert refused["success"] is False and "depth" in refused["error"]


async def test_trades_are_taker_sides_with_contiguous_ids_and_a_snapshot_of_50(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=200.0, trade_while_unsubscribed=True)
    with trio.fail_after(20):
        async with open_websocket_url(ws_url(server)) as ws:
            await send(ws, "subscribe", 1, channel="trade", symbol=["BTC/USD"], snapshot=False)
            await replies(ws, 1)
            live = await channel(ws, "trade", 40)
        trades = [t for m, _ in live for t in m["data"]]
        ids = [int(t["trade_id"]) for t in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        truth = {int(t.id): t for t in server.generated_trades("kraken", "spot", "BTC/USD")}
        for trade in trades:
            sim = truth[int(trade["trade_id"])]
            assert (format(trade["price"], "f"), format(trade["qty"], "f"), trade["side"]) == (
                sim.price,
                sim.size,
                sim.side.lower(),
            )
        # Numbers are JSON numbers with trailing zeros kept (`45285.20`, `0.00100000`).
        assert re.search(r'"price":\d+\.\d0,', live[0][1]) and re.search(r'"qty":\d+\.\d{8},', live[0][1])
        await trio.sleep(0.2)
        async with open_websocket_url(ws_url(server)) as ws:
            await send(ws, "subscribe", 2, channel="trade", symbol=["BTC/USD"], snapshot=True)
            await replies(ws, 1)
            ((first, _),) = await channel(ws, "trade", 1)
        assert first["type"] == "snapshot" and len(first["data"]) == 50
        snap_ids = [int(t["trade_id"]) for t in first["data"]]
        assert snap_ids == list(range(snap_ids[0], snap_ids[0] + 50)) and snap_ids[-1] > ids[-1]


async def check_book(server: SimServer, depth: int, messages: int) -> ClientBook:
    async with open_websocket_url(ws_url(server)) as ws:
        await send(ws, "subscribe", 1, channel="instrument", snapshot=True)
        ((instruments, _),) = await channel(ws, "instrument", 1)
        pair = next(p for p in instruments["data"]["pairs"] if p["symbol"] == "BTC/USD")
        assert (pair["price_precision"], pair["qty_precision"]) == (1, 8)
        book = ClientBook(depth, int(pair["price_precision"]), int(pair["qty_precision"]))
        await send(ws, "subscribe", 2, channel="book", symbol=["BTC/USD"], depth=depth)
        for message, raw in await channel(ws, "book", messages):
            (data,) = message["data"]
            book.apply(data, message["type"] == "snapshot")
            assert book.checksum() == data["checksum"], raw[:300]
    return book


async def test_every_book_message_checks_over_the_truncated_client_book(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=200.0, book_levels=40)
    with trio.fail_after(30):
        for depth in (10, 25):
            book = await check_book(server, depth, 300)
            assert len(book.bids) == len(book.asks) == depth
            # Levels were pushed out of the window without a qty-0 message: the client had to cut them.
            assert book.truncated > 0
            bids, asks, _ = server.true_book("kraken", "spot", "BTC/USD", depth)
            assert len(bids) == len(asks) == depth


async def test_bad_checksum_and_a_skipped_update_fail_the_next_check(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=50.0)
    with trio.fail_after(20):
        async with open_websocket_url(ws_url(server)) as ws:
            await send(ws, "subscribe", 1, channel="book", symbol=["BTC/USD"], depth=10)
            book = ClientBook(10, 1, 8)
            for message, _ in await channel(ws, "book", 3):
                book.apply(message["data"][0], message["type"] == "snapshot")
                assert book.checksum() == message["data"][0]["checksum"]
            # Frames already on the way still match; the first that does not is off by the flipped bit, and
            # the next one matches again (the book itself was right).
            server.kraken.bad_checksum("BTC/USD")
            results = []
            while len(results) < 2 and len(results) + len(book.bids) < 100:
                ((message, _),) = await channel(ws, "book", 1)
                book.apply(message["data"][0], False)
                sent = int(message["data"][0]["checksum"])
                if results or book.checksum() != sent:
                    results.append(book.checksum() ^ sent)
            assert results == [1, 0]
            # A skipped update: the client's book diverges, and a later checksum shows it.
            server.skip_update("kraken", "spot", "BTC/USD")
            with trio.fail_after(5):
                while True:
                    ((message, _),) = await channel(ws, "book", 1)
                    book.apply(message["data"][0], False)
                    if book.checksum() != message["data"][0]["checksum"]:
                        break


async def test_a_quiet_pair_sends_only_heartbeats_once_a_second(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, kraken_quiet=("ZZZ/USD",))
    async with open_websocket_url(ws_url(server)) as ws:
        opened = trio.current_time()
        await send(ws, "subscribe", 1, channel="trade", symbol=["ZZZ/USD"])
        await send(ws, "subscribe", 2, channel="book", symbol=["ZZZ/USD"], depth=10)
        kinds: list[tuple[str, float]] = []
        while len([k for k in kinds if k[0] == "heartbeat"]) < 3:
            message = parse(await ws.get_message())
            kinds.append((message.get("channel") or message["method"], trio.current_time() - opened))
    assert [k for k, _ in kinds] == [
        "status",
        "subscribe",
        "subscribe",
        "book",
        "heartbeat",
        "heartbeat",
        "heartbeat",
    ]
    assert [t for k, t in kinds if k == "heartbeat"] == [1.0, 2.0, 3.0]


async def quiet_feed(nursery: trio.Nursery, heartbeat_s: float | None) -> tuple[FeedCounters, list[str]]:
    """A real feed on the quiet pair alone, stale after 3 s, for 10 s of virtual time: its counters and
    the failures that ended its connections."""
    server = await start(nursery, kraken_quiet=("ZZZ/USD",), kraken_heartbeat_s=heartbeat_s)
    venue = kraken_venue.VENUE
    topics = (venue.topic("spot", "trades", "ZZZ/USD", 10), venue.topic("spot", "book", "ZZZ/USD", 10))
    counters = FeedCounters()
    bus: Bus[RawFrames] = Bus("raw")
    failures: list[str] = []
    with trio.move_on_after(10.0):
        while True:  # what the supervisor does: a fresh feed after each failure, after a backoff
            feed = Feed(
                name="kraken-spot",
                exchange="kraken",
                market="spot",
                url=ws_url(server),
                session_factory=lambda: venue.session("spot", topics),
                bus=bus,
                counters=counters,
                stale_timeout_s=3.0,
                ping_interval_s=20.0,
            )
            try:
                await feed.run()
            except Exception as exc:  # the stale watchdog's FeedError
                failures.append(str(exc))
            await trio.sleep(0.5)
    return counters, failures


async def test_heartbeats_keep_a_quiet_pairs_feed_alive(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    alive, failures = await quiet_feed(nursery, 1.0)
    assert failures == [] and alive.connects == 1 and alive.data_frames >= 9
    assert alive.rejected == {} and alive.unknown_control == 0


async def test_without_heartbeats_a_quiet_pairs_feed_goes_stale(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    silent, failures = await quiet_feed(nursery, None)
    assert len(failures) >= 2 and all("stale: nothing received for 3.0 s" in f for f in failures)
    assert silent.connects == len(failures) + 1


async def test_rest_trades_page_by_since_and_asset_pairs(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=200.0, trade_while_unsubscribed=True)
    with trio.fail_after(20):
        async with open_websocket_url(ws_url(server)) as ws:
            await send(ws, "subscribe", 1, channel="trade", symbol=["BTC/USD"])
            await channel(ws, "trade", 30)
        truth = server.generated_trades("kraken", "spot", "BTC/USD")
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            since = truth[10].ts_ms * 1_000_000
            body = (
                await client.get("/0/public/Trades", params={"pair": "XBTUSD", "since": since, "count": 5})
            ).json()
            assert body["error"] == []
            rows = body["result"]["XXBTZUSD"]
            later = [t for t in truth if t.ts_ms * 1_000_000 > since][:5]
            assert [(r[0], r[1], r[3], r[6]) for r in rows] == [
                (t.price, t.size, t.side[0].lower(), int(t.id)) for t in later
            ]
            assert body["result"]["last"] == str(later[-1].ts_ms * 1_000_000)
            pairs = (await client.get("/0/public/AssetPairs", params={"pair": "XBTUSD,ETHUSDT"})).json()
            assert pairs["error"] == [] and sorted(pairs["result"]) == ["ETHUSDT", "XXBTZUSD"]
            assert pairs["result"]["XXBTZUSD"] | {"ordermin": None} == {
                "altname": "XBTUSD",
                "wsname": "XBT/USD",
                "base": "XBT",
                "quote": "USD",
                "pair_decimals": 1,
                "lot_decimals": 8,
                "tick_size": "0.1",
                "ordermin": None,
                "status": "online",
            }
            unknown = (await client.get("/0/public/Trades", params={"pair": "NOPE"})).json()
            assert unknown == {"error": ["EQuery:Unknown asset pair"]}


async def test_rest_allows_a_burst_of_15_then_one_call_a_second(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery)
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        codes = [(await client.get("/0/public/AssetPairs")).status_code for _ in range(16)]
        assert codes == [200] * 15 + [429]
        await trio.sleep(1.0)
        assert (await client.get("/0/public/AssetPairs")).status_code == 200
        assert (await client.get("/0/public/AssetPairs")).status_code == 429
    assert (server.kraken.rest.requests, server.kraken.rest.throttled) == (18, 2)


async def test_a_refused_topic_is_refused_alone(nursery: trio.Nursery) -> None:
    server = await start(nursery, faults=Faults(reject_topics=("trade:ETH/USD",)))
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(server)) as ws:
            await send(ws, "subscribe", 1, channel="trade", symbol=["ETH/USD", "BTC/USD"])
            acks = await replies(ws, 2)
            assert [a["success"] for a in acks] == [False, True]


def test_cli_kraken_options_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--kraken-quiet", "ZZZ/USD", "--kraken-quiet", "QQQ/EUR", "--kraken-no-heartbeat"]
    )
    config = sim_config_from_args(args)
    assert (config.kraken_quiet, config.kraken_heartbeat_s) == (("ZZZ/USD", "QQQ/EUR"), None)
    defaults = sim_config_from_args(parser.parse_args([]))
    assert (defaults.kraken_quiet, defaults.kraken_heartbeat_s) == ((), 1.0)


async def test_run_from_args_prints_the_kraken_url(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with trio.move_on_after(0.3):
        await run_from_args(parser.parse_args(["--port", "0"]))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("kraken "))
    assert re.search(r"ws://127\.0\.0\.1:\d+/v2  rest http://127\.0\.0\.1:\d+$", line)
