"""The simulator's Coinbase Advanced Trade side, over real sockets with an independent client
(trio-websocket). Time-based behaviour (heartbeats, the subscribe deadline, quiet connections) runs under
`autojump_clock` with exact virtual times: loopback sockets deliver at once."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from marketflow.sim import Faults, SimConfig, SimServer, add_arguments, run_from_args, sim_config_from_args
from tests.conftest import wait_for

MAKER = {"Buy": "SELL", "Sell": "BUY"}


async def start(nursery: trio.Nursery, **config: Any) -> SimServer:
    server = SimServer(SimConfig(**config))
    await nursery.start(server.run)
    return server


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def subscribe(ws: WebSocketConnection, channel: str, products: list[str] | None = None) -> None:
    body: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if products is not None:
        body["product_ids"] = products
    await ws.send_message(json.dumps(body))


async def messages_until(ws: WebSocketConnection, done: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not done(got):
        got.append(await receive(ws))
    return got


async def test_subscriptions_sequence_snapshots_and_maker_sides(nursery: trio.Nursery) -> None:
    sim = await start(nursery, seed=3, rate=20.0, book_rate=20.0)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "heartbeats")
        await subscribe(ws, "level2", ["BTC-USD"])
        await subscribe(ws, "market_trades", ["BTC-USD"])
        with trio.fail_after(10):
            got = await messages_until(
                ws, lambda m: sum(1 for x in m if x["channel"] == "market_trades") >= 12
            )
    assert [m["sequence_num"] for m in got] == list(range(len(got)))  # one counter across channels
    acks = [m for m in got if m["channel"] == "subscriptions"]
    assert acks[0]["events"] == [{"subscriptions": {"heartbeats": ["heartbeats"]}}]
    assert acks[-1]["events"] == [
        {"subscriptions": {"heartbeats": ["heartbeats"], "level2": ["BTC-USD"], "market_trades": ["BTC-USD"]}}
    ]
    l2 = [m for m in got if m["channel"] == "l2_data"]
    first = l2[0]["events"][0]
    assert first["type"] == "snapshot" and first["product_id"] == "BTC-USD"
    assert {u["side"] for u in first["updates"]} == {"bid", "offer"}
    assert all(e["type"] == "update" for m in l2[1:] for e in m["events"])
    trades = [m for m in got if m["channel"] == "market_trades"]
    assert trades[0]["events"][0]["type"] == "snapshot"  # recent trades first (none yet on a new tape)
    sent = [t for m in trades for e in m["events"] for t in e["trades"]]
    truth = {t.id: t for t in sim.generated_trades("coinbase", "spot", "BTC-USD")}
    assert sent and all(t["side"] == MAKER[truth[t["trade_id"]].side] for t in sent)
    ids = sorted(int(t["trade_id"]) for t in sent)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous per product
    assert any(
        [int(t["trade_id"]) for t in e["trades"]] != sorted(int(t["trade_id"]) for t in e["trades"])
        for m in trades
        for e in m["events"]
    ), "some message carries its trades out of id order"
    # A second subscriber gets the product's last 100 trades as its snapshot.
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "market_trades", ["BTC-USD"])
        with trio.fail_after(10):
            again = await messages_until(ws, lambda m: any(x["channel"] == "market_trades" for x in m))
    (event,) = again[-1]["events"]
    latest = sim.generated_trades("coinbase", "spot", "BTC-USD")[-100:]
    assert event["type"] == "snapshot"
    assert sorted(t["trade_id"] for t in event["trades"]) == sorted(t.id for t in latest)


async def test_refusals(nursery: trio.Nursery) -> None:
    sim = await start(nursery, faults=Faults(reject_topics=("level2:ETH-USD",)))
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "level2", ["ETH-USD"])
        assert (await receive(ws))["reason"] == "ETH-USD is not a valid product"
        await ws.send_message(json.dumps({"type": "subscribe", "channels": ["level2", "market_trades"]}))
        assert (await receive(ws))["reason"] == "exactly one channel per message"
        await subscribe(ws, "level2", ["DOGE-EUR"])
        assert await receive(ws) == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "DOGE-EUR is not a valid product",
        }
        await ws.send_message("not json")
        assert (await receive(ws))["type"] == "error"


async def test_usdc_products_arrive_tagged_usd(nursery: trio.Nursery) -> None:
    sim = await start(nursery, rate=20.0)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "level2", ["ETH-USDC"])
        with trio.fail_after(10):
            got = await messages_until(ws, lambda m: any(x["channel"] == "l2_data" for x in m))
    assert got[0]["events"][0]["subscriptions"] == {"level2": ["ETH-USDC"]}
    assert got[-1]["events"][0]["product_id"] == "ETH-USD"


async def test_no_subscribe_within_five_seconds_closes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        start_at = trio.current_time()
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 1008
        assert trio.current_time() - start_at == 5.0


async def test_a_quiet_product_is_closed_without_heartbeats_and_kept_with_them(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, coinbase_quiet=("XLM-USD",))
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        opened = trio.current_time()
        await subscribe(ws, "level2", ["XLM-USD"])
        got = await messages_until(ws, lambda m: len(m) == 2)
        assert [m["channel"] for m in got] == ["subscriptions", "l2_data"]
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 1000
        closed_after = trio.current_time() - opened
        assert 60 <= closed_after <= 92  # 60-90 s without updates, checked each second
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "heartbeats")
        await subscribe(ws, "level2", ["XLM-USD"])
        opened = trio.current_time()
        beats = []
        while trio.current_time() - opened < 200:
            message = await receive(ws)
            if message["channel"] == "heartbeats":
                beats.append(message["events"][0]["heartbeat_counter"])
        assert beats == list(range(1, len(beats) + 1)) and len(beats) >= 199


async def test_lost_updates_and_jumps_show_in_sequence_num(nursery: trio.Nursery) -> None:
    sim = await start(nursery, rate=5.0, book_rate=20.0)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "level2", ["BTC-USD"])
        with trio.fail_after(10):
            got = await messages_until(ws, lambda m: len(m) >= 4)
            sim.skip_update("coinbase", "spot", "BTC-USD")
            got += await messages_until(ws, lambda m: len(m) >= 3)
            sim.coinbase_sequence_jump(5)
            got += await messages_until(ws, lambda m: len(m) >= 3)
    seqs = [m["sequence_num"] for m in got]
    steps = [b - a for a, b in zip(seqs, seqs[1:], strict=False)]
    assert sorted(steps)[-2:] == [2, 6], seqs  # one lost update, then five numbers skipped
    assert steps.count(1) == len(steps) - 2


async def test_ticker_rest_window_maker_side_and_limits(nursery: trio.Nursery) -> None:
    sim = await start(nursery, rate=50.0)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "market_trades", ["BTC-USD"])
        with trio.fail_after(10):
            await messages_until(ws, lambda m: sum(1 for x in m if x["channel"] == "market_trades") >= 10)
    with trio.fail_after(10):  # nobody subscribed: the tape stops
        await wait_for(lambda: not sim.trade_feed("coinbase", "spot", "BTC-USD").running, 0.01)
    truth = sim.generated_trades("coinbase", "spot", "BTC-USD")
    url = sim.http_url + "/api/v3/brokerage/market/products/BTC-USD/ticker"
    async with httpx.AsyncClient() as client:
        answer = (await client.get(url, params={"limit": 5})).json()
        assert [t["trade_id"] for t in answer["trades"]] == [t.id for t in truth[-5:]][::-1]
        assert all(
            t["side"] == MAKER[g.side] for t, g in zip(answer["trades"], truth[-5:][::-1], strict=True)
        )
        assert all(Decimal(t["price"]) > 0 for t in answer["trades"])
        end_s = truth[0].ts_ms // 1000
        windowed = (await client.get(url, params={"limit": 1000, "end": end_s})).json()
        assert windowed["trades"] == []
        assert (await client.get(url, params={"limit": 0})).status_code == 400
        codes = [(await client.get(url, params={"limit": 1})).status_code for _ in range(12)]
        assert 429 in codes


async def test_same_seed_same_tape(nursery: trio.Nursery) -> None:
    tapes = []
    for _ in range(2):
        sim = await start(nursery, seed=11, rate=50.0)
        async with open_websocket_url(sim.coinbase_ws_url()) as ws:
            await subscribe(ws, "market_trades", ["ETH-USD"])
            with trio.fail_after(10):
                await messages_until(ws, lambda m: sum(1 for x in m if x["channel"] == "market_trades") >= 6)
        tapes.append(
            [(t.id, t.price, t.size, t.side) for t in sim.generated_trades("coinbase", "spot", "ETH-USD")]
        )
    shortest = min(len(t) for t in tapes)
    assert shortest > 5 and tapes[0][:shortest] == tapes[1][:shortest]


async def test_malformed_frames_carry_no_sequence_num_and_data_keeps_counting(nursery: trio.Nursery) -> None:
    sim = await start(nursery, rate=20.0)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "market_trades", ["BTC-USD"])
        raw: list[str | bytes] = []
        with trio.fail_after(10):
            while len(raw) < 3:
                raw.append(await ws.get_message())
            sim.inject_malformed(6)
            # They follow the next data message written; messages already on their way come first.
            while len([m for m in raw if _numbered(m) is None]) < 6:
                raw.append(await ws.get_message())
            raw += [await ws.get_message() for _ in range(3)]  # and numbering goes on after them
    numbered = [n for n in map(_numbered, raw) if n is not None]
    assert len(raw) - len(numbered) == 6 and numbered == list(range(len(numbered)))


def _numbered(message: str | bytes) -> int | None:
    """A message's `sequence_num`; None for a malformed one."""
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    if isinstance(parsed, dict) and "sequence_num" in parsed:
        return int(parsed["sequence_num"])
    return None


def test_cli_lists_quiet_products_and_prints_the_url(capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = sim_config_from_args(parser.parse_args(["--coinbase-quiet", "xlm-usd,ALGO-USD"]))
    assert config.coinbase_quiet == ("XLM-USD", "ALGO-USD")

    async def main() -> None:
        with trio.move_on_after(0.3):
            await run_from_args(parser.parse_args(["--port", "0"]))

    trio.run(main)
    assert "/coinbase/ws" in capsys.readouterr().out


async def test_ticker_snapshot_then_updates_with_the_last_price_and_best_levels(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery, rate=20.0)
    async with open_websocket_url(sim.coinbase_ws_url()) as ws:
        await subscribe(ws, "ticker", ["BTC-USD"])
        with trio.fail_after(10):
            got = await messages_until(ws, lambda m: sum(1 for x in m if x["channel"] == "ticker") >= 5)
    tickers = [m["events"][0] for m in got if m["channel"] == "ticker"]
    assert tickers[0]["type"] == "snapshot" and all(t["type"] == "update" for t in tickers[1:])
    prices = {t.price for t in sim.generated_trades("coinbase", "spot", "BTC-USD")}
    volumes = []
    for event in tickers[1:]:
        (tick,) = event["tickers"]
        assert tick["product_id"] == "BTC-USD" and tick["price"] in prices
        assert Decimal(tick["best_bid"]) < Decimal(tick["best_ask"])
        volumes.append(Decimal(tick["volume_24_h"]))
    assert volumes == sorted(volumes) and volumes[0] > 0
