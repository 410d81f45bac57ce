"""The simulator's Bybit v5 side, checked over real sockets with an independent client (trio-websocket).

Everything runs on 127.0.0.1 port 0 under `trio.fail_after`. Tests about time (rates, stalls, slow pongs,
idle timeouts) run under `autojump_clock` and assert exact virtual times: loopback sockets deliver at once.
"""

from __future__ import annotations

import argparse
import json
import ssl
import uuid
from typing import Any

import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from marketflow.sim import (
    Faults,
    HttpRequest,
    HttpResponse,
    SimConfig,
    SimServer,
    add_arguments,
    run_from_args,
    sim_config_from_args,
)
from marketflow.sim.market import TradeTape, instrument_for

TICKS = {"PlusTick", "ZeroPlusTick", "MinusTick", "ZeroMinusTick"}


async def start(nursery: trio.Nursery, ssl_context: ssl.SSLContext | None = None, **config: Any) -> SimServer:
    server = SimServer(SimConfig(**config), ssl_context)
    await nursery.start(server.run)
    return server


async def request(ws: WebSocketConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send a control message and return the next control reply (skipping data frames)."""
    await ws.send_message(json.dumps(message))
    while True:
        reply = json.loads(await ws.get_message())
        if "topic" not in reply:
            return reply  # type: ignore[no-any-return]


async def next_frame(ws: WebSocketConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.get_message())
        if "topic" in message:
            return message  # type: ignore[no-any-return]


async def frames_within(ws: WebSocketConnection, seconds: float) -> list[dict[str, Any]]:
    """Every data frame that arrives in the next `seconds`."""
    frames: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            frames.append(await next_frame(ws))
    return frames


def rows(frames: list[dict[str, Any]]) -> list[tuple[str, str, str, str, int, int]]:
    return [(t["i"], t["p"], t["v"], t["S"], t["T"], t["seq"]) for f in frames for t in f["data"]]


# -- acks, pongs, errors ------------------------------------------------------------------------------


async def test_subscribe_ack_spot_exact_shape(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await ws.send_message('{"req_id":"10001","op":"subscribe","args":["publicTrade.BTCUSDT"]}')
            raw = await ws.get_message()
            ack = json.loads(raw)
            assert list(ack) == ["success", "ret_msg", "conn_id", "req_id", "op"]
            assert ack["success"] is True
            assert ack["ret_msg"] == "subscribe"
            assert ack["req_id"] == "10001"
            assert ack["op"] == "subscribe"
            uuid.UUID(ack["conn_id"])
            # Without req_id, spot leaves the key out.
            ack = await request(ws, {"op": "subscribe", "args": ["publicTrade.ETHUSDT"]})
            assert list(ack) == ["success", "ret_msg", "conn_id", "op"]


@pytest.mark.parametrize("category", ["linear", "inverse"])
async def test_subscribe_ack_linear_exact_shape(nursery: trio.Nursery, category: str) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url(category)) as ws:
            ack = await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            conn_id = ack.pop("conn_id")
            uuid.UUID(conn_id)
            assert ack == {"success": True, "ret_msg": "", "req_id": "", "op": "subscribe"}
            ack = await request(ws, {"req_id": "abc", "op": "subscribe", "args": ["publicTrade.ETHUSDT"]})
            assert list(ack) == ["success", "ret_msg", "conn_id", "req_id", "op"]
            assert ack["req_id"] == "abc" and ack["conn_id"] == conn_id


async def test_conn_ids_are_deterministic_per_connection(nursery: trio.Nursery) -> None:
    ids = []
    for _ in range(2):
        server = await start(nursery, seed=7)
        with trio.fail_after(5):
            for _ in range(2):
                async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
                    ids.append((await request(ws, {"op": "ping"}))["conn_id"])
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]


async def test_spot_more_than_ten_args_refuses_the_whole_request(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, rate=100.0, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    topics = [f"publicTrade.{s}" for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    topics += [f"orderbook.{d}.{s}" for d in (1, 50) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    topics += ["orderbook.200.BTCUSDT", "orderbook.200.ETHUSDT"]
    assert len(topics) == 11
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            ack = await request(ws, {"req_id": "big", "op": "subscribe", "args": topics})
            assert ack["success"] is False
            assert ack["ret_msg"] == "args size >10"
            assert ack["op"] == "subscribe"
            assert await frames_within(ws, 0.3) == []
            # Nothing was subscribed, so the same topics are not "already subscribed" now.
            ack = await request(ws, {"op": "subscribe", "args": topics[:10]})
            assert ack["success"] is True
            while not (await next_frame(ws))["topic"].startswith("publicTrade."):
                pass  # order-book snapshots come first
    assert server.statistics().rejected_subscribes == 11


@pytest.mark.parametrize(
    "topic",
    [
        "publicTrade.NOTASYMBOL",
        "orderbook.500.BTCUSDT",
        "tickers.NOTASYMBOL",
        "allLiquidation.NOTASYMBOL",
        "publicTrade",
        "publicTrade.btcusdt",
    ],
)
async def test_unknown_topic_is_rejected(nursery: trio.Nursery, topic: str) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            ack = await request(ws, {"op": "subscribe", "args": [topic]})
            assert ack.pop("conn_id")
            expected = f"error:handler not found,topic:{topic}"
            assert ack == {"success": False, "ret_msg": expected, "req_id": "", "op": "subscribe"}
            # The connection stays open and answers pings.
            assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"


async def test_reject_topics_fault_and_mixed_request(nursery: trio.Nursery) -> None:
    faults = Faults(reject_topics=("publicTrade.ETHUSDT",))
    server = await start(nursery, rate=50.0, faults=faults)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            args = ["publicTrade.ETHUSDT", "publicTrade.BTCUSDT", "publicTrade.NOPE"]
            ack = await request(ws, {"req_id": "m", "op": "subscribe", "args": args})
            assert ack["success"] is False
            assert "topic:publicTrade.ETHUSDT" in ack["ret_msg"]
            assert "topic:publicTrade.NOPE" in ack["ret_msg"]
            assert "topic:publicTrade.BTCUSDT" not in ack["ret_msg"]
            assert ack["ret_msg"].startswith("error:handler not found,topic:")
            # The good topic was subscribed anyway, the bad ones were not.
            frames = [await next_frame(ws) for _ in range(3)]
            assert {f["topic"] for f in frames} == {"publicTrade.BTCUSDT"}
            again = await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            assert again["ret_msg"] == "error:already subscribed,topic:publicTrade.BTCUSDT"
    stats = server.statistics()
    assert (stats.subscribes, stats.rejected_subscribes) == (1, 3)


async def test_pong_shapes(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            pong = await request(ws, {"op": "ping"})
            assert list(pong) == ["success", "ret_msg", "conn_id", "op"]
            assert (pong["success"], pong["ret_msg"], pong["op"]) == (True, "pong", "ping")
            pong = await request(ws, {"req_id": "100001", "op": "ping"})
            assert pong["req_id"] == "100001"
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            pong = await request(ws, {"op": "ping"})
            assert pong.pop("conn_id")
            assert pong == {"success": True, "ret_msg": "pong", "req_id": "", "op": "ping"}
            pong = await request(ws, {"req_id": "100001", "op": "ping"})
            assert pong["req_id"] == "100001"
    assert server.statistics().pings == 4


@pytest.mark.parametrize(
    ("message", "ret_msg"),
    [
        ("{not json", "error:invalid json"),
        ("[1, 2]", "error:request must be a JSON object"),
        ('{"op":"dance","args":[]}', "error:unsupported op,op:dance"),
        ('{"op":"subscribe","args":"publicTrade.BTCUSDT"}', "error:args must be a list of topic strings"),
    ],
)
async def test_bad_client_messages_get_error_acks(nursery: trio.Nursery, message: str, ret_msg: str) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await ws.send_message(message)
            reply = json.loads(await ws.get_message())
            assert reply["success"] is False
            assert reply["ret_msg"] == ret_msg
            assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"


async def test_protocol_pings_are_answered(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await ws.ping(b"are you there")
    assert server.statistics().pings == 1


async def test_slow_pong(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, faults=Faults(slow_pong_s=0.3))
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            sent = trio.current_time()
            assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"
            assert trio.current_time() - sent == pytest.approx(0.3)


# -- publicTrade frames ---------------------------------------------------------------------------------


async def test_spot_frames_have_the_live_shape(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            frames = [await next_frame(ws) for _ in range(20)]
    last_seq = 0
    last_id = 0
    for frame in frames:
        assert list(frame) == ["topic", "ts", "type", "data"]
        assert frame["topic"] == "publicTrade.BTCUSDT" and frame["type"] == "snapshot"
        assert 1 <= len(frame["data"]) <= 8
        for trade in frame["data"]:
            assert list(trade) == sorted(trade) == ["BT", "RPI", "S", "T", "i", "p", "s", "seq", "v"]
            assert trade["BT"] is False and trade["RPI"] is False and trade["s"] == "BTCUSDT"
            assert trade["S"] in ("Buy", "Sell")
            assert isinstance(trade["i"], str) and int(trade["i"]) > 2**53 and int(trade["i"]) > last_id
            last_id = int(trade["i"])
            assert trade["seq"] > last_seq
            last_seq = trade["seq"]
            whole, frac = trade["p"].split(".")
            assert len(frac) == 1 and 50_000 < int(whole) < 80_000
            assert len(trade["v"].split(".")[1]) == 6 and float(trade["v"]) > 0
            assert trade["T"] <= frame["ts"]


async def test_linear_frames_have_the_live_shape(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT", "publicTrade.ETHUSDT"]})
            frames = [await next_frame(ws) for _ in range(20)]
    keys = ["T", "s", "S", "v", "p", "L", "i", "BT", "RPI", "seq"]
    for frame in frames:
        assert list(frame) == ["topic", "type", "ts", "data"]
        assert 1 <= len(frame["data"]) <= 3
        symbol = frame["topic"].removeprefix("publicTrade.")
        for trade in frame["data"]:
            assert list(trade) == keys
            assert trade["s"] == symbol and trade["L"] in TICKS
            assert uuid.UUID(trade["i"]).version == 5
            assert len(trade["p"].split(".")[1]) == 2
            assert trade["T"] <= frame["ts"]
            if symbol == "BTCUSDT":
                assert len(trade["v"].split(".")[1]) == 3


async def test_frames_are_shared_by_subscribers_of_a_topic(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with (
            open_websocket_url(server.bybit_ws_url("linear")) as first,
            open_websocket_url(server.bybit_ws_url("linear")) as second,
        ):
            await request(first, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            await next_frame(first)
            await request(second, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            joined = await next_frame(second)
            seen = [await next_frame(first) for _ in range(3)]
            # The second subscriber's first frame is one the first subscriber also gets, identically.
            while seen[0] != joined:
                seen.pop(0)
                seen.append(await next_frame(first))
            for frame in seen[1:]:
                assert await next_frame(second) == frame


# -- determinism and ground truth -------------------------------------------------------------------------


async def _first_trades(nursery: trio.Nursery, seed: int, rate: float, category: str) -> list[Any]:
    server = await start(nursery, seed=seed, rate=rate, max_frames=30)
    async with open_websocket_url(server.bybit_ws_url(category)) as ws:
        await request(ws, {"op": "subscribe", "args": ["publicTrade.ETHUSDT"]})
        frames = [await next_frame(ws) for _ in range(30)]
    # Prices, sizes, sides, ids, seq and the grouping into frames; not the wall-clock times.
    return [[(t["i"], t["p"], t["v"], t["S"], t["seq"]) for t in f["data"]] for f in frames]


@pytest.mark.parametrize("category", ["spot", "linear"])
async def test_same_seed_same_tape_whatever_the_rate(nursery: trio.Nursery, category: str) -> None:
    with trio.fail_after(10):
        paced = await _first_trades(nursery, 42, 200.0, category)
        burst = await _first_trades(nursery, 42, 0.0, category)
        other = await _first_trades(nursery, 43, 0.0, category)
    assert paced == burst
    assert paced != other


def test_tape_does_not_depend_on_how_it_is_cut() -> None:
    one = TradeTape(5, "linear", instrument_for("linear", "BTCUSDT"))
    two = TradeTape(5, "linear", instrument_for("linear", "BTCUSDT"))
    bulk = one.take(100, 1_000)
    pieces = [row for n in (1, 7, 50, 42) for row in two.take(n, 1_000)]
    assert bulk == pieces
    assert one.frame_sizes(10, 1, 3) == two.frame_sizes(4, 1, 3) + two.frame_sizes(6, 1, 3)


async def test_delivered_trades_equal_what_the_client_received(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, rate=200.0, max_frames=25)
    with trio.fail_after(5):
        async with (
            open_websocket_url(server.bybit_ws_url("spot")) as spot,
            open_websocket_url(server.bybit_ws_url("linear")) as linear,
        ):
            await request(spot, {"op": "subscribe", "args": ["publicTrade.BTCUSDT", "publicTrade.ETHUSDT"]})
            await request(linear, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            spot_frames = [await next_frame(spot) for _ in range(50)]
            linear_frames = [await next_frame(linear) for _ in range(25)]
            assert await frames_within(spot, 0.2) == []
    for category, frames in (("spot", spot_frames), ("linear", linear_frames)):
        truth = server.delivered_trades(category)
        assert sorted(rows(frames)) == sorted((t.id, t.price, t.size, t.side, t.ts_ms, t.seq) for t in truth)
        for symbol in ("BTCUSDT", "ETHUSDT"):
            received = rows([f for f in frames if f["topic"].endswith(symbol)])
            expected = [(t.id, t.price, t.size, t.side, t.ts_ms, t.seq) for t in truth if t.symbol == symbol]
            assert received == expected  # same order within a symbol
    everything = server.delivered_trades()
    assert len(everything) == server.generated_count() == server.statistics().trades_sent
    assert {t.category for t in everything} == {"spot", "linear"}


async def test_max_frames_stops_the_topic_but_not_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, rate=100.0, max_frames=5)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            assert len(await frames_within(ws, 0.4)) == 5
            assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"
    assert server.statistics().frames_sent == 5


async def test_rate_is_exact(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            subscribed = trio.current_time()
            arrivals = []
            while len(arrivals) < 100:
                await next_frame(ws)
                arrivals.append(trio.current_time() - subscribed)
    # One frame every 20 ms from the subscription on: 50 frames a second, none early or late.
    assert arrivals == pytest.approx([(n + 1) * 0.02 for n in range(100)])


async def test_unsubscribe_stops_that_topic(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT", "publicTrade.ETHUSDT"]})
            await next_frame(ws)
            ack = await request(ws, {"req_id": "u", "op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]})
            assert ack.pop("conn_id")
            assert ack == {"success": True, "ret_msg": "unsubscribe", "req_id": "u", "op": "unsubscribe"}
            topics = {f["topic"] for f in await frames_within(ws, 0.3)}
            assert topics == {"publicTrade.ETHUSDT"}
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            ack = await request(ws, {"op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]})
            assert ack.pop("conn_id")
            assert ack == {"success": True, "ret_msg": "", "req_id": "", "op": "unsubscribe"}
            assert await frames_within(ws, 0.3) == []


async def test_orderbook_topics_start_with_a_snapshot(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            topics = [f"orderbook.{depth}.BTCUSDT" for depth in (1, 50, 200, 1000)]
            assert (await request(ws, {"op": "subscribe", "args": topics}))["success"] is True
            first = [await next_frame(ws) for _ in topics]
            assert [(f["topic"], f["type"]) for f in first] == [(t, "snapshot") for t in topics]


# -- faults -------------------------------------------------------------------------------------------


async def test_drop_connections_then_reconnect_continues_the_tape(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            before = rows([await next_frame(ws) for _ in range(5)])
            assert server.drop_connections() == 1
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1006  # no close frame: an abnormal closure
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            after = rows([await next_frame(ws) for _ in range(5)])
    assert int(after[0][0]) > int(before[-1][0])
    ids = [t.id for t in server.delivered_trades()]
    assert len(ids) == len(set(ids))
    assert server.statistics().drops == 1


async def test_scheduled_drops(nursery: trio.Nursery) -> None:
    server = await start(nursery, faults=Faults(drop_every_s=0.2))
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.get_message()
    assert server.statistics().drops >= 1


def _malformed_kind(message: str | bytes) -> str:
    if isinstance(message, bytes):
        return "binary"
    try:
        frame = json.loads(message)
    except ValueError:
        return "truncated" if message.startswith('{"topic"') else "not_json"
    if not frame["topic"].startswith("publicTrade."):
        return "unknown_topic"
    trade = frame["data"][0]
    if trade.get("p") == "abc":
        return "bad_price"
    if "S" not in trade:
        return "missing_side"
    return "good"


@pytest.mark.parametrize("category", ["spot", "linear"])
async def test_injected_malformed_frames_of_every_kind(nursery: trio.Nursery, category: str) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url(category)) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            await next_frame(ws)
            server.inject_malformed(6)
            # They follow the next data frame written; frames already on their way come first, good.
            kinds = [_malformed_kind(await ws.get_message())]
            while len([k for k in kinds if k != "good"]) < 6:
                kinds.append(_malformed_kind(await ws.get_message()))
            while kinds[1] == "good":
                del kinds[0]
            assert kinds == [
                "good",
                "truncated",
                "not_json",
                "unknown_topic",
                "binary",
                "bad_price",
                "missing_side",
            ]
            assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"
    assert server.statistics().malformed_sent == 6


async def test_malformed_every_n_frames(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=200.0, faults=Faults(malformed_every=3))
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            kinds = [_malformed_kind(await ws.get_message()) for _ in range(8)]
    assert kinds == ["good", "good", "good", "truncated", "good", "good", "good", "not_json"]
    # Malformed frames are not trades: the ground truth holds only the good ones.
    assert all(t.price != "abc" for t in server.delivered_trades())


async def test_stall_sends_nothing_then_resumes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            await next_frame(ws)
            stalled = trio.current_time()
            server.stall(0.5)
            await ws.send_message('{"op":"ping","req_id":"during"}')
            first = json.loads(await ws.get_message())  # something arrives, only once the stall is over
            assert trio.current_time() - stalled == pytest.approx(0.5)
            queued = await frames_within(ws, 0.001)
            # The 50 frames generated meanwhile (10 ms apart) follow at once.
            assert len(queued) + ("topic" in first) == 50


async def test_scheduled_stalls(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    began = trio.current_time()
    server = await start(nursery, rate=100.0, faults=Faults(stall_every_s=0.3, stall_for_s=0.25))
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            arrivals = []
            with trio.move_on_after(1.0):
                while True:
                    await next_frame(ws)
                    arrivals.append(trio.current_time())
    # A frame every 10 ms, except while stalled (0.30-0.55 s, 0.60-0.85 s, 0.90-1.15 s): what was
    # generated meanwhile (26 frames each time) comes at once when the stall ends.
    ms = [round((t - began) * 1000) for t in arrivals]
    assert ms == [*range(10, 300, 10), *[550] * 26, *range(560, 600, 10), *[850] * 26, *range(860, 900, 10)]


async def test_idle_connection_is_closed(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, idle_timeout_s=0.3)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            opened = trio.current_time()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert trio.current_time() - opened == pytest.approx(0.3)
            assert closed.value.reason is not None
            assert closed.value.reason.reason == "idle timeout"
        # A client that pings is not idle.
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            for _ in range(6):
                await trio.sleep(0.1)
                assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"


# -- HTTP, routing, robustness, TLS -----------------------------------------------------------------------


async def _http(server: SimServer, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream(server.host, server.port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_rest_unknown_path_is_a_json_404(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        reply = await _http(
            server, b"GET /v5/market/nothing?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"retCode": 10001, "retMsg": "unknown path"}


async def test_rest_routes_and_keep_alive(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    seen: list[HttpRequest] = []

    async def echo(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(200, json.dumps({"q": request.query}).encode())

    server.add_rest_route("/v5/market/echo", echo)
    with trio.fail_after(5):
        reply = await _http(
            server,
            b"GET /v5/market/echo?symbol=BTCUSDT HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v5/missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b'{"q": {"symbol": ["BTCUSDT"]}}')
    assert second.startswith(b"404 ")
    assert seen[0].method == "GET" and seen[0].path == "/v5/market/echo"


async def test_unknown_ws_path_is_refused(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5), pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(f"ws://{server.host}:{server.port}/v5/public/nope"):
            pass
    assert rejected.value.status_code == 404


async def test_bad_clients_do_not_hurt_the_server(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        assert (await _http(server, b"\x16\x03\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await _http(server, b"x" * 20_000)).startswith(b"HTTP/1.1 431 ")
        # A plain GET on a WS path is answered by the WebSocket handshake (426), not crashed on.
        assert b" 426 " in (await _http(server, b"GET /v5/public/spot HTTP/1.1\r\nHost: x\r\n\r\n"))[:20]
        # An unmasked client frame is a protocol error: that connection is failed, the server lives on.
        stream = await trio.open_tcp_stream(server.host, server.port)
        handshake = (
            b"GET /v5/public/spot HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        async with stream:
            await stream.send_all(handshake)
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 101 ")
            await stream.send_all(b"\x81\x02hi")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(b"\x88\x13\x03\xeaincorrect masking")  # close frame 1002, then EOF
        # The same bad frame right behind the handshake: the connection is cut straight away.
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            await stream.send_all(handshake + b"\x81\x02hi")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 101 ")
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            assert (await request(ws, {"op": "ping"}))["ret_msg"] == "pong"


async def test_tls(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = await start(nursery, server_context, rate=100.0)
    assert server.bybit_ws_url("spot").startswith("wss://127.0.0.1:")
    assert server.http_url.startswith("https://")
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("spot"), client_context) as ws:
            assert (await request(ws, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]}))["success"]
            assert (await next_frame(ws))["topic"] == "publicTrade.BTCUSDT"
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=client_context)
        async with stream:
            await stream.send_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 404 ")


# -- CLI --------------------------------------------------------------------------------------------------


def test_cli_arguments_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    line = (
        "--port 0 --rate 5 --seed 3 --symbols btcusdt,SOLUSDT --max-frames 9 --drop-every 30 "
        "--malformed-every 100 --stall-every 60 --stall-for 2 --reject-topic publicTrade.SOLUSDT "
        "--reject-topic orderbook.1.BTCUSDT --slow-pong 0.5"
    )
    args = parser.parse_args(line.split())
    config = sim_config_from_args(args)
    assert (config.port, config.rate, config.seed, config.max_frames) == (0, 5.0, 3, 9)
    assert config.symbols == ("BTCUSDT", "SOLUSDT")
    assert config.faults == Faults(
        drop_every_s=30.0,
        malformed_every=100,
        stall_every_s=60.0,
        stall_for_s=2.0,
        reject_topics=("publicTrade.SOLUSDT", "orderbook.1.BTCUSDT"),
        slow_pong_s=0.5,
    )
    assert parser.parse_args([]).port == 8765


async def test_run_from_args_prints_urls(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with trio.move_on_after(0.3):
        await run_from_args(parser.parse_args(["--port", "0"]))
    out = capsys.readouterr().out
    assert "bybit spot" in out and "/v5/public/spot" in out and "/v5/public/linear" in out
    assert "ws://127.0.0.1:" in out
    with trio.move_on_after(0.5):
        await run_from_args(parser.parse_args(["--port", "0", "--tls"]))
    out = capsys.readouterr().out
    assert "wss://127.0.0.1:" in out
    ca_path = out.split("written to ")[1].split()[0]
    assert (await trio.Path(ca_path).read_text()).startswith("-----BEGIN CERTIFICATE-----")
    await trio.Path(ca_path).unlink()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="symbols"):
        SimConfig(symbols=("BTC/USDT",))
    with pytest.raises(ValueError, match="spot_trades_per_frame"):
        SimConfig(spot_trades_per_frame=(0, 3))
    with pytest.raises(ValueError, match="drop_every_s"):
        Faults(drop_every_s=0)
