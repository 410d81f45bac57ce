"""The simulator's OKX v5 side, checked over real sockets with an independent client (trio-websocket).

Everything runs on 127.0.0.1 port 0 under `trio.fail_after`; time bounds are deliberately wide. The
checksum is recomputed here from the frames' own strings (zlib, signed), independently of marketflow's
book code.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from marketflow.sim import SimConfig, SimServer, add_arguments, run_from_args, sim_config_from_args


async def start(nursery: trio.Nursery, **config: Any) -> SimServer:
    server = SimServer(SimConfig(**config))
    await nursery.start(server.run)
    return server


async def events(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` event replies (acks, errors), skipping pushes."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        message = json.loads(await ws.get_message())
        if "event" in message:
            out.append(message)
    return out


async def pushes(ws: WebSocketConnection, channel: str, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        message = json.loads(await ws.get_message())
        if message.get("arg", {}).get("channel") == channel and "data" in message:
            out.append(message)
    return out


async def next_fault(
    ws: WebSocketConnection, last: int, shaped: Callable[[dict[str, Any], int], bool]
) -> dict[str, Any]:
    """The first book push `shaped` by an injected fault; the ones before it were already on their way
    when the fault was set, so they must continue the chain."""
    while True:
        (data,) = [m["data"][0] for m in await pushes(ws, "books", 1)]
        if shaped(data, last):
            return data
        assert data["prevSeqId"] == last
        last = data["seqId"]


def crc(bids: list[list[str]], asks: list[list[str]]) -> int:
    parts: list[str] = []
    for i in range(min(max(len(bids), len(asks)), 25)):
        if i < len(bids):
            parts += bids[i][:2]
        if i < len(asks):
            parts += asks[i][:2]
    value = zlib.crc32(":".join(parts).encode())
    return value - 2**32 if value >= 2**31 else value


class Book:
    """A client book over the exact strings, as a checker: price string → level list."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, list[str]] = {}
        self.asks: dict[Decimal, list[str]] = {}

    def apply(self, data: dict[str, Any], snapshot: bool) -> None:
        if snapshot:
            self.bids, self.asks = {}, {}
        for side, levels in ((self.bids, data["bids"]), (self.asks, data["asks"])):
            for level in levels:
                if Decimal(level[1]) == 0:
                    side.pop(Decimal(level[0]), None)
                else:
                    side[Decimal(level[0])] = level

    def checksum(self) -> int:
        bids = [self.bids[p] for p in sorted(self.bids, reverse=True)]
        asks = [self.asks[p] for p in sorted(self.asks)]
        return crc(bids, asks)


async def test_subscribe_acks_each_arg_and_errors_name_the_instrument(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            args = [
                {"channel": "trades", "instId": "BTC-USDT"},
                {"channel": "trades", "instId": "BTC-XYZ"},
                {"channel": "books", "instId": "BTC-USD-SWAP"},
            ]
            await ws.send_message(json.dumps({"id": "a1", "op": "subscribe", "args": args}))
            acks = await events(ws, 3)
            assert acks[0]["event"] == "subscribe" and acks[0]["arg"] == args[0] and acks[0]["id"] == "a1"
            assert acks[1]["event"] == "error" and acks[1]["code"] == "60018"
            assert "BTC-XYZ" in acks[1]["msg"]
            assert acks[2]["event"] == "subscribe" and acks[2]["arg"] == args[2]
            await ws.send_message("ping")
            while (message := await ws.get_message()) != "pong":
                assert message.startswith("{")


async def test_trades_carry_taker_side_count_and_contiguous_ids(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=200.0)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"id": "t1", "op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT-SWAP"}]}
            await ws.send_message(json.dumps(sub))
            frames = await pushes(ws, "trades", 40)
    trades = [t for f in frames for t in f["data"]]
    assert {t["side"] for t in trades} <= {"buy", "sell"}
    for before, after in zip(trades, trades[1:], strict=False):
        assert int(after["tradeId"]) - int(after["count"]) == int(before["tradeId"])
    truth = server.generated_trades("okx", "swap", "BTC-USDT-SWAP")
    by_last = {t.last_seq: t for t in truth}
    for t in trades:
        sim = by_last[int(t["tradeId"])]
        assert (t["px"], t["sz"], t["side"]) == (sim.price, sim.size, sim.side.lower())
        assert int(t["count"]) == sim.last_seq - sim.seq + 1


async def test_subscription_pushes_the_latest_trade_at_once(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}
            await ws.send_message(json.dumps(sub))
            first = (await pushes(ws, "trades", 3))[-1]["data"][0]
        async with open_websocket_url(server.okx_ws_url()) as ws:
            await ws.send_message(json.dumps(sub))
            again = (await pushes(ws, "trades", 1))[0]["data"][0]
    # Older than this subscription, and already seen by the first connection or newer than it.
    assert int(again["tradeId"]) >= int(first["tradeId"])


async def test_books_chain_and_checksum_hold_over_the_exact_strings(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=100.0)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}
            await ws.send_message(json.dumps(sub))
            messages = await pushes(ws, "books", 30)
    book = Book()
    last = None
    assert messages[0]["action"] == "snapshot" and messages[0]["data"][0]["prevSeqId"] == -1
    for message in messages:
        data = message["data"][0]
        assert all(len(level) == 4 and level[2] == "0" for level in data["bids"] + data["asks"])
        if last is not None:
            assert data["prevSeqId"] == last and data["seqId"] > last
        last = data["seqId"]
        book.apply(data, message["action"] == "snapshot")
        assert data["checksum"] == book.checksum() != 0


async def test_book_faults_skip_reset_bad_and_zero_checksum_keepalive(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=50.0, okx_keepalive_s=0.3)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USD-SWAP"}]}
            await ws.send_message(json.dumps(sub))
            (snapshot,) = await pushes(ws, "books", 1)
            book = Book()
            book.apply(snapshot["data"][0], True)
            last = snapshot["data"][0]["seqId"]
            server.skip_update("okx", "swap", "BTC-USD-SWAP")
            # A chain break: one update was never sent (pushes already on their way continue the chain).
            data = await next_fault(ws, last, lambda d, last: d["prevSeqId"] != last)
            last = data["seqId"]
            server.okx_reset("swap", "BTC-USD-SWAP")
            data = await next_fault(ws, last, lambda d, last: d["seqId"] < d["prevSeqId"])
            assert data["prevSeqId"] == last
            server.okx_bad_checksum("swap", "BTC-USD-SWAP")
            (data,) = [m["data"][0] for m in await pushes(ws, "books", 1)]
            fresh = Book()
            fresh.bids, fresh.asks = dict(book.bids), dict(book.asks)
            assert data["checksum"] != 0
            server.okx_keepalive("swap", "BTC-USD-SWAP")
            while True:
                (data,) = [m["data"][0] for m in await pushes(ws, "books", 1)]
                if data["prevSeqId"] == data["seqId"]:
                    assert data["bids"] == [] and data["asks"] == []
                    break
    zero = await start(nursery, okx_zero_checksum=True)
    with trio.fail_after(10):
        async with open_websocket_url(zero.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}
            await ws.send_message(json.dumps(sub))
            assert all(m["data"][0]["checksum"] == 0 for m in await pushes(ws, "books", 3))


async def test_bad_checksum_fault_sends_a_checksum_that_does_not_match(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=50.0)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "books", "instId": "ETH-USDT"}]}
            await ws.send_message(json.dumps(sub))
            book = Book()
            for message in await pushes(ws, "books", 3):
                book.apply(message["data"][0], message["action"] == "snapshot")
            server.okx_bad_checksum("spot", "ETH-USDT")
            # Pushes already on their way when the fault was set carry the right checksum; the first one
            # published after it (a higher seqId than the stream's then) carries a wrong one.
            stream = server.book_feed("okx", "spot", "ETH-USDT").streams["books:ETH-USDT"]
            armed_at = stream.seq  # type: ignore[attr-defined]
            while True:
                (data,) = [m["data"][0] for m in await pushes(ws, "books", 1)]
                book.apply(data, False)
                if data["seqId"] > armed_at:
                    break
                assert data["checksum"] == book.checksum()
            assert data["checksum"] != book.checksum()


async def test_rest_instruments_history_and_limit(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=200.0, trade_while_unsubscribed=True)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USD-SWAP"}]}
            await ws.send_message(json.dumps(sub))
            await pushes(ws, "trades", 30)
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            swaps = (await client.get("/api/v5/public/instruments", params={"instType": "SWAP"})).json()
            rows = {row["instId"]: row for row in swaps["data"]}
            assert rows["BTC-USD-SWAP"]["ctType"] == "inverse" and rows["BTC-USD-SWAP"]["ctVal"] == "100"
            assert rows["BTC-USDT-SWAP"]["ctType"] == "linear" and rows["BTC-USDT-SWAP"]["ctValCcy"] == "BTC"
            spot = (await client.get("/api/v5/public/instruments", params={"instType": "SPOT"})).json()
            assert {row["ctVal"] for row in spot["data"]} == {""}
            truth = server.generated_trades("okx", "swap", "BTC-USD-SWAP")
            top = truth[-1].last_seq
            params = {"instId": "BTC-USD-SWAP", "type": "1", "after": str(top - 20), "limit": "10"}
            page = (await client.get("/api/v5/market/history-trades", params=params)).json()["data"]
            ids = [int(t["tradeId"]) for t in page]
            assert ids == list(range(top - 21, top - 31, -1))
            by_fill = {}
            for t in truth:
                for fill in range(t.seq, t.last_seq + 1):
                    by_fill[fill] = t
            order = by_fill[ids[0]]
            assert all(
                t["side"] == order.side.lower() or by_fill[int(t["tradeId"])] is not order for t in page
            )
            statuses = [
                (await client.get("/api/v5/market/books", params={"instId": "BTC-USDT"})).status_code
                for _ in range(25)
            ]
            assert statuses.count(429) >= 5 and statuses[:20] == [200] * 20


def test_cli_okx_options_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--okx-zero-checksum", "--okx-legacy-books", "--okx-keepalive", "5"])
    config = sim_config_from_args(args)
    assert (config.okx_zero_checksum, config.okx_legacy_books, config.okx_keepalive_s) == (True, True, 5.0)
    defaults = sim_config_from_args(parser.parse_args([]))
    assert (defaults.okx_zero_checksum, defaults.okx_legacy_books, defaults.okx_keepalive_s) == (
        False,
        False,
        60.0,
    )


async def test_run_from_args_prints_the_okx_url(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with trio.move_on_after(0.3):
        await run_from_args(parser.parse_args(["--port", "0"]))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("okx "))
    assert "/ws/v5/public" in line and "rest http://127.0.0.1:" in line


async def test_legacy_books_carry_no_seq_ids_but_a_checksum(nursery: trio.Nursery) -> None:
    server = await start(nursery, okx_legacy_books=True, book_rate=50.0)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}
            await ws.send_message(json.dumps(sub))
            book = Book()
            for message in await pushes(ws, "books", 5):
                data = message["data"][0]
                assert "seqId" not in data and "prevSeqId" not in data
                book.apply(data, message["action"] == "snapshot")
                assert data["checksum"] == book.checksum()


async def test_no_book_snapshot_mode_sends_updates_only_and_rest_books_carries_the_seq_id(
    nursery: trio.Nursery,
) -> None:
    # OKX's changelog announces that `books` will send no initial snapshot; the REST book, taken while the
    # stream runs, carries the `seqId` the stream's chain is aligned with.
    server = await start(nursery, book_rate=50.0, okx_no_book_snapshot=True)
    with trio.fail_after(10):
        async with open_websocket_url(server.okx_ws_url()) as ws:
            sub = {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}
            await ws.send_message(json.dumps(sub))
            first = await pushes(ws, "books", 3)
            assert [m["action"] for m in first] == ["update"] * 3
            assert all(m["data"][0]["prevSeqId"] != -1 for m in first)
            async with httpx.AsyncClient(base_url=server.http_url) as client:
                answer = await client.get("/api/v5/market/books", params={"instId": "BTC-USDT", "sz": "400"})
            (rest,) = answer.json()["data"]
            stream = server.book_feed("okx", "spot", "BTC-USDT").streams["books:BTC-USDT"]
            assert first[-1]["data"][0]["seqId"] <= rest["seqId"] <= stream.seq  # type: ignore[attr-defined]
            # The stream continues from that seqId: applying the later updates to it gives the stream's book.
            book = Book()
            book.apply(rest, True)
            last = rest["seqId"]
            while True:
                (data,) = [m["data"][0] for m in await pushes(ws, "books", 1)]
                if data["seqId"] > last:
                    break
            assert data["prevSeqId"] == last
            book.apply(data, False)
            assert data["checksum"] == book.checksum() != 0
