"""The simulator's Binance spot and USD-M side, checked over real sockets with independent clients.

Clients are trio-websocket (which answers pings by itself) and, where pongs must be withheld or frames
seen raw, a minimal hand-written WebSocket client. Everything runs on 127.0.0.1 port 0 under
`trio.fail_after`; tests about time (pings, pong deadlines, lifetimes, rate limits, shutdown notices) run
under `autojump_clock` and assert exact virtual times.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import uuid
from decimal import Decimal
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from marketflow.sim import Faults, SimConfig, SimServer, add_arguments, run_from_args, sim_config_from_args
from marketflow.sim.binance import MAX_STREAMS

SPOT_AGG_KEYS = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]
USDM_AGG_KEYS = ["e", "E", "a", "s", "p", "q", "nq", "f", "l", "T", "m"]


async def start(nursery: trio.Nursery, **config: Any) -> SimServer:
    server = SimServer(SimConfig(**config))
    await nursery.start(server.run)
    return server


def spot(server: SimServer, path: str) -> str:
    return server.binance_ws_base("spot") + path


def usdm(server: SimServer, path: str) -> str:
    return server.binance_ws_base("usdm") + path


async def get_json(ws: WebSocketConnection) -> Any:
    return json.loads(await ws.get_message())


async def reply(ws: WebSocketConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    """Send a control message; return the next message that is a reply (has `id`), skipping data."""
    await ws.send_message(message if isinstance(message, str) else json.dumps(message))
    while True:
        msg = await get_json(ws)
        if "id" in msg:
            return msg  # type: ignore[no-any-return]


async def events(ws: WebSocketConnection, count: int, kind: str | None = None) -> list[dict[str, Any]]:
    """The next `count` data events (unwrapped from combined frames), optionally only of type `kind`."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        msg = await get_json(ws)
        data = msg.get("data", msg)
        if "e" in data and (kind is None or data["e"] == kind):
            out.append(data)
    return out


async def silent_for(ws: WebSocketConnection, seconds: float) -> list[Any]:
    got: list[Any] = []
    with trio.move_on_after(seconds):
        while True:
            got.append(await get_json(ws))
    return got


async def closed_reason(ws: WebSocketConnection) -> tuple[int, str | None]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code, reason.reason


class RawClient:
    """A minimal WebSocket client: no automatic pongs, every server frame visible (opcode, payload)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, server: SimServer, path: str) -> RawClient:
        stream = await trio.open_tcp_stream(server.host, server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        client = cls(stream)
        while b"\r\n\r\n" not in client.buffer:
            client.buffer += await stream.receive_some(65536)
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return client

    async def _need(self, n: int) -> bool:
        while len(self.buffer) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def frame(self) -> tuple[int, bytes] | None:
        """The next (opcode, payload); None at EOF."""
        if not await self._need(2):
            return None
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        at = 2
        if length == 126:
            await self._need(4)
            length, at = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            await self._need(10)
            length, at = int.from_bytes(self.buffer[2:10], "big"), 10
        if not await self._need(at + length):
            return None
        payload, self.buffer = self.buffer[at : at + length], self.buffer[at + length :]
        return opcode, payload

    async def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.stream.send_all(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)


async def http_get(server: SimServer, target: str) -> tuple[int, dict[str, str], Any]:
    """(status, lower-cased headers, JSON body) of one GET."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


# -- paths, wrappers, frame shapes ------------------------------------------------------------------------


async def test_combined_and_raw_paths(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(
            spot(server, "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade")
        ) as ws:
            frames = [await get_json(ws) for _ in range(20)]
        assert all(list(f) == ["stream", "data"] for f in frames)
        assert {f["stream"] for f in frames} == {"btcusdt@aggTrade", "ethusdt@aggTrade"}
        assert all(f["data"]["s"] == f["stream"].split("@")[0].upper() for f in frames)
        async with open_websocket_url(spot(server, "/ws/btcusdt@aggTrade/ethusdt@trade")) as ws:
            raw = [await get_json(ws) for _ in range(20)]
        assert {(m["e"], m["s"]) for m in raw} == {("aggTrade", "BTCUSDT"), ("trade", "ETHUSDT")}


async def test_spot_agg_trade_shape_and_contiguous_ids(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws/btcusdt@aggTrade")) as ws:
            trades = await events(ws, 40)
    for prev, t in zip(trades, trades[1:], strict=False):
        assert t["a"] == prev["a"] + 1  # the daemon checks trade-id gaps with these
        assert t["f"] == prev["l"] + 1
    for t in trades:
        assert list(t) == SPOT_AGG_KEYS
        assert t["e"] == "aggTrade" and t["s"] == "BTCUSDT" and t["M"] is True
        assert isinstance(t["a"], int) and t["f"] <= t["l"] and t["T"] <= t["E"]
        assert len(t["p"].split(".")[1]) == 8 and len(t["q"].split(".")[1]) == 8
        assert t["q"].endswith("000") and Decimal(t["q"]) > 0  # lot 0.00001 shown with 8 decimals
        assert 50_000 < Decimal(t["p"]) < 80_000 and isinstance(t["m"], bool)


async def test_usdm_agg_trade_shape(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(usdm(server, "/market/ws/btcusdt@aggTrade")) as ws:
            trades = await events(ws, 20)
    for prev, t in zip(trades, trades[1:], strict=False):
        assert t["a"] == prev["a"] + 1 and t["f"] == prev["l"] + 1
    for t in trades:
        assert list(t) == USDM_AGG_KEYS
        assert t["nq"] == t["q"] and len(t["p"].split(".")[1]) == 2 and len(t["q"].split(".")[1]) == 3


@pytest.mark.parametrize("market", ["spot", "usdm"])
async def test_trade_stream_splits_each_agg_trade(nursery: trio.Nursery, market: str) -> None:
    server = await start(nursery, rate=50.0)
    path = "/stream?streams=btcusdt@aggTrade/btcusdt@trade"
    if market == "usdm":
        path = "/market" + path
    with trio.fail_after(5):
        async with open_websocket_url(server.binance_ws_base(market) + path) as ws:
            got = await events(ws, 120)
    aggs = [e for e in got if e["e"] == "aggTrade"]
    trades = {e["t"]: e for e in got if e["e"] == "trade"}
    if market == "usdm":
        assert list(next(iter(trades.values()))) == ["e", "E", "T", "s", "t", "p", "q", "X", "m", "st"]
    checked = 0
    for agg in aggs:
        fills = [trades.get(t) for t in range(agg["f"], agg["l"] + 1)]
        if None in fills:
            continue  # not all of them read yet
        assert sum(Decimal(f["q"]) for f in fills if f) == Decimal(agg["q"])
        assert {(f["p"], f["m"], f["T"]) for f in fills if f} == {(agg["p"], agg["m"], agg["T"])}
        checked += 1
    assert checked >= 10
    assert sorted(trades) == list(range(min(trades), max(trades) + 1))


# -- control messages ----------------------------------------------------------------------------------


async def test_subscribe_list_unsubscribe(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws")) as ws:
            assert await silent_for(ws, 0.2) == []
            await ws.send_message(
                '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}'
            )
            assert await get_json(ws) == {"result": None, "id": 1}
            assert (await events(ws, 1))[0]["e"] == "aggTrade"
            listing = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
            assert listing == {"result": ["btcusdt@aggTrade", "btcusdt@depth"], "id": 3}
            ack = await reply(ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 312})
            assert ack == {"result": None, "id": 312}
            await trio.sleep(1.1)  # the inbound limit is 5 messages a second
            left = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": "x"})
            assert left == {"result": ["btcusdt@depth"], "id": "x"}
            assert {m.get("e") for m in await silent_for(ws, 0.3)} <= {"depthUpdate"}


@pytest.mark.parametrize(
    "req_id", [0, -5, 2**63 - 1, -(2**63), "abc123", "a" * 36, None, str(uuid.uuid4())], ids=repr
)
async def test_valid_ids_are_echoed(nursery: trio.Nursery, req_id: Any) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws")) as ws:
            assert await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": req_id}) == {
                "result": [],
                "id": req_id,
            }


@pytest.mark.parametrize("req_id", [2**63, True, 1.5, "a" * 37, "bad id!", {}, []], ids=repr)
async def test_invalid_ids_are_refused(nursery: trio.Nursery, req_id: Any) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws")) as ws:
            answer = await reply(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": req_id})
            assert answer["id"] is None and answer["error"]["code"] == 2
            assert answer["error"]["msg"].startswith("Invalid request: request ID must be")
            assert await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}


@pytest.mark.parametrize(
    ("message", "code", "msg"),
    [
        ("{not json", 3, "Invalid JSON: "),
        ("[1]", 2, "Invalid request: expected a JSON object"),
        ('{"params":[],"id":7}', 2, "Invalid request: missing field `method`"),
        (
            '{"method":"DANCE","id":7}',
            2,
            "Invalid request: unknown variant `DANCE`, expected one of `SUBSCRIBE`",
        ),
        ('{"method":"SUBSCRIBE","params":"btcusdt@trade","id":7}', 2, "Invalid request: params must be"),
        (
            '{"method":"SUBSCRIBE","params":["nopeusdt@aggTrade"],"id":7}',
            2,
            "Invalid request: invalid stream",
        ),
        ('{"method":"SUBSCRIBE","params":["BTCUSDT@aggTrade"],"id":7}', 2, "Invalid request: invalid stream"),
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":7}', 2, "Invalid request: invalid stream"),
        (
            '{"method":"SUBSCRIBE","params":["btcusdt@depth@500ms"],"id":7}',
            2,
            "Invalid request: invalid stream",
        ),
        ('{"method":"SUBSCRIBE","params":["btcusdt"],"id":7}', 2, "Invalid request: invalid stream"),
        ('{"method":"GET_PROPERTY","params":["speed"],"id":7}', 0, "Unknown property"),
        (
            '{"method":"SET_PROPERTY","params":["combined",1],"id":7}',
            1,
            "Invalid value type: expected Boolean",
        ),
    ],
)
async def test_errors_are_wrapped(nursery: trio.Nursery, message: str, code: int, msg: str) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws/ethusdt@aggTrade")) as ws:
            answer = await reply(ws, message)
            assert list(answer) == ["error", "id"] and list(answer["error"]) == ["code", "msg"]
            assert answer["error"]["code"] == code and answer["error"]["msg"].startswith(msg)
            assert answer["id"] == (7 if message.startswith('{"') and '"id":7' in message else None)
            # The connection goes on, and a refused SUBSCRIBE subscribed nothing.
            listing = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 8})
            assert listing == {"result": ["ethusdt@aggTrade"], "id": 8}


async def test_a_bad_stream_refuses_the_whole_subscribe(nursery: trio.Nursery) -> None:
    server = await start(nursery, faults=Faults(reject_topics=("ethusdt@depth",)))
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws")) as ws:
            answer = await reply(
                ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@depth"], "id": 1}
            )
            assert answer == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
            assert (await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2}))["result"] == []
    assert server.statistics().rejected_subscribes == 2


async def test_combined_property(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws/btcusdt@aggTrade")) as ws:
            assert await reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {
                "result": False,
                "id": 2,
            }
            assert "e" in await get_json(ws)
            ack = await reply(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5})
            assert ack == {"result": None, "id": 5}
            assert (await get_json(ws))["stream"] == "btcusdt@aggTrade"
            assert (await reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 6}))[
                "result"
            ] is True
        async with open_websocket_url(spot(server, "/stream")) as ws:
            assert (await reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1}))[
                "result"
            ] is True


# -- limits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("market", "limit"), [("spot", 5), ("usdm", 10)])
async def test_inbound_rate_limit_closes(
    nursery: trio.Nursery, market: str, limit: int, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery)
    path = "/ws" if market == "spot" else "/usdm/ws"
    with trio.fail_after(5):
        async with open_websocket_url(server.binance_ws_base("spot") + path) as ws:
            for n in range(limit):
                assert (await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": n}))["id"] == n
            await trio.sleep(1.05)  # a new second: the allowance is back
            for n in range(limit):
                assert (await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": n}))["id"] == n
        # Pings count too: limit - 1 messages, a ping, and one more message is one too many.
        client = await RawClient.connect(server, path)
        for n in range(limit - 1):
            await client.send(0x1, b'{"method":"LIST_SUBSCRIPTIONS","id":%d}' % n)
        await client.send(0x9, b"counts too")
        await client.send(0x1, b'{"method":"LIST_SUBSCRIPTIONS","id":99}')
        seen = []
        while (frame := await client.frame()) is not None and frame[0] != 0x8:
            seen.append(frame)
        await client.stream.aclose()
    assert frame is not None and int.from_bytes(frame[1][:2], "big") == 1008
    assert [json.loads(p)["id"] for op, p in seen if op == 0x1] == list(range(limit - 1))
    assert (0xA, b"counts too") in seen
    assert server.statistics().rate_limited == 1


async def test_stream_cap(nursery: trio.Nursery) -> None:
    symbols = tuple(f"S{n}USDT" for n in range(MAX_STREAMS // 2 + 1))
    server = await start(nursery, symbols=symbols, rate=0.01, book_rate=0.01, book_levels=10)
    names = [f"{s.lower()}@{kind}" for s in symbols for kind in ("aggTrade", "trade")]
    with trio.fail_after(10):
        async with open_websocket_url(spot(server, "/ws")) as ws:
            ok = await reply(ws, {"method": "SUBSCRIBE", "params": names[: MAX_STREAMS - 1], "id": 1})
            assert ok == {"result": None, "id": 1}
            # Already subscribed streams do not count again.
            ok = await reply(ws, {"method": "SUBSCRIBE", "params": names[:MAX_STREAMS], "id": 2})
            assert ok == {"result": None, "id": 2}
            over = await reply(ws, {"method": "SUBSCRIBE", "params": names[MAX_STREAMS:], "id": 3})
            assert over == {"error": {"code": 4, "msg": "Too many subscriptions"}, "id": 3}
            listing = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4})
            assert listing["result"] == names[:MAX_STREAMS]


async def test_ping_frames_and_the_pong_deadline(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, binance_ping_interval_s=0.25, binance_pong_timeout_s=0.6)
    with trio.fail_after(5):
        # A client that never answers: pings every 0.25 s, then a close frame (1008) at the deadline.
        client = await RawClient.connect(server, "/ws")
        opened = trio.current_time()
        seen: list[tuple[int, bytes]] = []
        while (frame := await client.frame()) is not None:
            seen.append(frame)
            if frame[0] == 0x8:
                break
            if frame[0] == 0x9 and len(seen) == 1:
                await client.send(0xA, b"")  # an unsolicited pong (wrong payload) does not help
        # Pings at 0.25, 0.5 and 0.75 s; the first one unanswered 0.6 s later (0.85 s) closes it.
        assert trio.current_time() - opened == pytest.approx(0.85)
        pings = [p for op, p in seen if op == 0x9]
        assert len(pings) == 3 and len(set(pings)) == len(pings)
        assert seen[-1][0] == 0x8 and int.from_bytes(seen[-1][1][:2], "big") == 1008
        assert seen[-1][1][2:] == b"pong timeout"
        await client.stream.aclose()
        # trio-websocket answers every ping with its payload: the connection lives on.
        async with open_websocket_url(spot(server, "/ws")) as ws:
            assert await silent_for(ws, 1.5) == []
            assert (await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}))["result"] == []
    assert server.statistics().pings_sent == 3 + 6  # and one every 0.25 s of the 1.5 s the second one lived


async def test_default_ping_intervals_are_the_real_ones(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        client = await RawClient.connect(server, "/usdm/public/ws")
        with trio.move_on_after(0.3):
            assert await client.frame() is None  # nothing: the first ping is minutes away
        await client.stream.aclose()
    rules = server._binance_rules
    assert (rules["spot"].ping_interval_s, rules["spot"].pong_timeout_s) == (20.0, 60.0)
    assert (rules["usdm"].ping_interval_s, rules["usdm"].pong_timeout_s) == (180.0, 600.0)
    assert rules["spot"].max_lifetime_s == 86_400.0


async def test_server_shutdown(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, rate=20.0)
    with trio.fail_after(5):
        async with (
            open_websocket_url(spot(server, "/ws/btcusdt@aggTrade")) as raw,
            open_websocket_url(usdm(server, "/public/stream?streams=btcusdt@depth")) as combined,
            open_websocket_url(server.bybit_ws_url("spot")) as bybit,
        ):
            await get_json(raw)
            assert server.server_shutdown(0.3) == 2
            told = trio.current_time()
            while (msg := await get_json(raw)).get("e") != "serverShutdown":
                pass
            assert list(msg) == ["e", "E"]
            while (msg := await get_json(combined)).get("stream") != "!serverShutdown":
                pass
            assert msg["data"]["e"] == "serverShutdown"
            assert await closed_reason(raw) == (1001, "server shutdown")
            assert trio.current_time() - told == pytest.approx(0.3)
            assert (await closed_reason(combined))[0] == 1001
            await bybit.send_message('{"op":"ping"}')
            assert json.loads(await bybit.get_message())["ret_msg"] == "pong"


async def test_connection_lifetime(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, binance_max_lifetime_s=0.5)
    with trio.fail_after(5):
        async with open_websocket_url(usdm(server, "/market/ws")) as ws:
            opened = trio.current_time()
            assert await closed_reason(ws) == (1001, "connection lifetime exceeded")
            assert trio.current_time() - opened == pytest.approx(0.5)


# -- USD-M routing -------------------------------------------------------------------------------------


async def test_usdm_routes(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery, rate=50.0)
    streams = "btcusdt@depth@100ms/btcusdt@aggTrade"
    with trio.fail_after(8):
        for path in (f"/public/stream?streams={streams}", f"/stream?streams={streams}"):
            async with open_websocket_url(usdm(server, path)) as ws:
                got = {m["data"]["e"] for m in [await get_json(ws) for _ in range(8)]}
                assert got == {"depthUpdate"}  # the aggTrade stream is acknowledged but silent here
                listing = await reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
                assert listing["result"] == ["btcusdt@depth@100ms", "btcusdt@aggTrade"]
        async with open_websocket_url(usdm(server, "/ws")) as ws:
            ack = await reply(ws, {"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 1})
            assert ack == {"result": None, "id": 1}
            assert await silent_for(ws, 0.4) == []
        async with open_websocket_url(usdm(server, f"/market/stream?streams={streams}")) as ws:
            got = {m["data"]["e"] for m in [await get_json(ws) for _ in range(8)]}
            assert got == {"aggTrade"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ws/nopeusdt@aggTrade", 400),
        ("/stream?streams=btcusdt@aggTrade/BTCUSDT@trade", 400),
        ("/ws/", 400),
        ("/usdm/public/ws/btcusdt@depth@1000ms", 400),
        ("/public/ws", 404),
        ("/usdm/private/ws", 404),
    ],
)
async def test_bad_paths_are_refused(nursery: trio.Nursery, path: str, status: int) -> None:
    server = await start(nursery)
    with trio.fail_after(5), pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(f"ws://{server.host}:{server.port}{path}"):
            pass
    assert rejected.value.status_code == status


def test_urls() -> None:
    server = SimServer(SimConfig(port=4321))
    assert server.binance_ws_base("spot") == "ws://127.0.0.1:4321"
    assert server.binance_ws_base("usdm") == "ws://127.0.0.1:4321/usdm"
    assert server.binance_rest_base("spot") == server.binance_rest_base("usdm") == "http://127.0.0.1:4321"
    with pytest.raises(ValueError, match="unknown exchange/market"):
        server.binance_ws_base("linear")


# -- depth streams -------------------------------------------------------------------------------------


async def test_spot_depth_is_contiguous(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    with trio.fail_after(8):
        async with open_websocket_url(
            spot(server, "/stream?streams=btcusdt@depth@100ms/ethusdt@depth")
        ) as ws:
            got = [await get_json(ws) for _ in range(25)]
    fast = [m["data"] for m in got if m["stream"] == "btcusdt@depth@100ms"]
    slow = [m["data"] for m in got if m["stream"] == "ethusdt@depth"]
    for prev, event in zip(fast, fast[1:], strict=False):
        assert list(event) == ["e", "E", "s", "U", "u", "b", "a"]
        assert event["U"] == prev["u"] + 1 and event["U"] <= event["u"]
    # @depth is 1000 ms: at 20 updates/s each event folds 20 updates.
    assert len(slow) >= 1 and all(e["u"] - e["U"] + 1 >= 20 for e in slow)  # 1+ id per update
    level = fast[0]["b"][0] if fast[0]["b"] else fast[0]["a"][0]
    assert len(level[0].split(".")[1]) == 8 and len(level[1].split(".")[1]) == 8


async def test_usdm_depth_pu_chains_and_u_is_not_contiguous(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    with trio.fail_after(8):
        async with open_websocket_url(usdm(server, "/public/ws/btcusdt@depth")) as ws:
            got = await events(ws, 12)
    for prev, event in zip(got, got[1:], strict=False):
        assert list(event) == ["e", "E", "T", "s", "U", "u", "pu", "b", "a"]
        assert event["pu"] == prev["u"]
        assert event["U"] > prev["u"] + 1  # ids skipped between events, like the live stream
        assert event["T"] <= event["E"]
    deletes = [q for e in got for _, q in e["b"] + e["a"] if Decimal(q) == 0]
    assert deletes and set(deletes) == {"0.000"}


# -- REST ----------------------------------------------------------------------------------------------


async def test_rest_depth_shapes(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        status, headers, body = await http_get(server, "/api/v3/depth?symbol=BTCUSDT")
        assert status == 200 and list(body) == ["lastUpdateId", "bids", "asks"]
        assert len(body["bids"]) == len(body["asks"]) == 100
        assert headers["x-mbx-used-weight-1m"] == headers["x-mbx-used-weight"] == "5"
        bids, asks, last_id = server.true_book("binance", "spot", "BTCUSDT", 100)
        assert body["lastUpdateId"] == last_id
        assert [tuple(level) for level in body["bids"]] == bids and [tuple(a) for a in body["asks"]] == asks
        status, headers, body = await http_get(server, "/api/v3/depth?symbol=BTCUSDT&limit=5000")
        assert headers["x-mbx-used-weight-1m"] == "255" and len(body["bids"]) > 100
        status, headers, body = await http_get(server, "/fapi/v1/depth?symbol=ETHUSDT&limit=5")
        assert status == 200 and list(body) == ["lastUpdateId", "E", "T", "bids", "asks"]
        assert len(body["bids"]) == 5 and headers["x-mbx-used-weight-1m"] == "2"
        assert len(body["asks"][0][0].split(".")[1]) == 2 and len(body["asks"][0][1].split(".")[1]) == 3


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/api/v3/depth", -1102),
        ("/api/v3/depth?symbol=btc%2Fusdt", -1100),
        ("/api/v3/depth?symbol=NOPEUSDT", -1121),
        ("/api/v3/depth?symbol=BTCUSDT&limit=abc", -1100),
        ("/api/v3/depth?symbol=BTCUSDT&limit=0", -1130),
        ("/fapi/v1/depth?symbol=BTCUSDT&limit=7", -1130),
        ("/api/v3/aggTrades?symbol=BTCUSDT&limit=1001", -1130),
        ("/fapi/v1/aggTrades?symbol=BTCUSDT&fromId=-1", -1100),
        ("/fapi/v1/aggTrades?symbol=XRPUSDT", -1121),
    ],
)
async def test_rest_parameter_errors(nursery: trio.Nursery, target: str, code: int) -> None:
    server = await start(nursery)
    with trio.fail_after(5):
        status, _, body = await http_get(server, target)
    assert status == 400 and list(body) == ["code", "msg"] and body["code"] == code


async def test_rest_weight_limit(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with trio.fail_after(20):
        for _ in range(60):  # 250 each: the 25th request of a minute goes over 6000
            status, headers, body = await http_get(server, "/api/v3/depth?symbol=ETHUSDT&limit=5000")
            if status == 429:
                break
        assert status == 429 and body["code"] == -1003 and body["msg"].startswith("Too many requests")
        assert int(headers["x-mbx-used-weight-1m"]) > 6000 and int(headers["retry-after"]) > 0
        # USD-M counts separately.
        status, headers, _ = await http_get(server, "/fapi/v1/depth?symbol=ETHUSDT&limit=1000")
        assert status == 200 and headers["x-mbx-used-weight-1m"] == "20"
    assert server.statistics().rest_throttled == 1


@pytest.mark.parametrize("market", ["spot", "usdm"])
async def test_rest_agg_trades_and_backfill_after_a_disconnect(
    nursery: trio.Nursery, market: str, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, rate=40.0, trade_while_unsubscribed=True)
    base, path, stream = {
        "spot": ("", "/api/v3/aggTrades", "/ws/btcusdt@aggTrade"),
        "usdm": ("/usdm", "/fapi/v1/aggTrades", "/usdm/market/ws/btcusdt@aggTrade"),
    }[market]
    with trio.fail_after(8):
        async with open_websocket_url(server.binance_ws_base("spot") + stream) as ws:
            before = await events(ws, 10)
        await trio.sleep(0.5)  # the tape goes on without us
        async with open_websocket_url(server.binance_ws_base("spot") + stream) as ws:
            after = (await events(ws, 1))[0]
        missed = after["a"] - before[-1]["a"] - 1
        assert missed >= 10
        _, _, backfill = await http_get(
            server, f"{path}?symbol=BTCUSDT&fromId={before[-1]['a'] + 1}&limit={missed}"
        )
    assert [t["a"] for t in backfill] == list(range(before[-1]["a"] + 1, after["a"]))
    assert backfill[0]["f"] == before[-1]["l"] + 1 and backfill[-1]["l"] == after["f"] - 1
    keys = (
        ["a", "p", "q", "f", "l", "T", "m", "M"] if market == "spot" else ["a", "p", "q", "f", "l", "T", "m"]
    )
    assert all(list(t) == keys for t in backfill)
    truth = {int(t.id): t for t in server.generated_trades("binance", market, "BTCUSDT")}
    for t in backfill:
        sim = truth[t["a"]]
        assert (sim.price, sim.size, sim.seq, sim.last_seq, sim.ts_ms) == (
            t["p"],
            t["q"],
            t["f"],
            t["l"],
            t["T"],
        )
        assert (
            sim.side == ("Sell" if t["m"] else "Buy") and sim.exchange == "binance" and sim.category == market
        )


async def test_rest_agg_trades_default_is_the_latest(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/ws/ethusdt@aggTrade")) as ws:
            seen = await events(ws, 30)
            _, _, latest = await http_get(server, "/api/v3/aggTrades?symbol=ETHUSDT&limit=5")
            _, _, window = await http_get(
                server, f"/api/v3/aggTrades?symbol=ETHUSDT&startTime={seen[0]['T']}"
            )
    assert len(latest) == 5 and [t["a"] for t in latest] == list(range(latest[0]["a"], latest[0]["a"] + 5))
    assert latest[-1]["a"] >= seen[-1]["a"]
    assert window[0]["a"] <= seen[0]["a"] and all(t["T"] >= seen[0]["T"] for t in window)


async def test_bybit_recent_trade(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=100.0)
    with trio.fail_after(5):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await ws.send_message('{"op":"subscribe","args":["publicTrade.BTCUSDT"]}')
            frames = [json.loads(await ws.get_message()) for _ in range(30)]
        status, _, body = await http_get(server, "/v5/market/recent-trade?category=linear&symbol=BTCUSDT")
        assert status == 200 and list(body) == ["retCode", "retMsg", "result", "retExtInfo", "time"]
        assert (body["retCode"], body["retMsg"], body["result"]["category"]) == (0, "OK", "linear")
        listing = body["result"]["list"]
        keys = ["execId", "symbol", "price", "size", "side", "time", "isBlockTrade", "isRPITrade", "seq"]
        assert all(list(t) == keys for t in listing) and 0 < len(listing) <= 500
        assert [int(t["seq"]) for t in listing] == sorted((int(t["seq"]) for t in listing), reverse=True)
        received = {t["i"]: t for f in frames if "data" in f for t in f["data"]}
        for t in listing:
            if t["execId"] in received:
                ws_trade = received[t["execId"]]
                assert (t["price"], t["size"], t["side"], int(t["time"])) == (
                    ws_trade["p"],
                    ws_trade["v"],
                    ws_trade["S"],
                    ws_trade["T"],
                )
        _, _, body = await http_get(server, "/v5/market/recent-trade?category=linear&symbol=BTCUSDT&limit=3")
        assert len(body["result"]["list"]) == 3 and body["result"]["list"] == listing[:3]
        _, _, body = await http_get(server, "/v5/market/recent-trade?category=spot&symbol=ETHUSDT")
        assert body["retCode"] == 0 and body["result"]["list"] == []
        for query, msg in [
            ("category=option&symbol=BTCUSDT", "Illegal category"),
            ("symbol=BTCUSDT", "Illegal category"),
            ("category=spot&symbol=NOPE", "Not supported symbols"),
            ("category=spot", "params error: symbol is required"),
            ("category=spot&symbol=BTCUSDT&limit=61", "params error: limit must be between 1 and 60"),
        ]:
            status, _, body = await http_get(server, "/v5/market/recent-trade?" + query)
            assert status == 200 and (body["retCode"], body["retMsg"], body["result"]) == (10001, msg, {})


# -- ground truth, determinism, malformed frames, CLI ----------------------------------------------------


async def test_delivered_and_generated_trades_cover_binance(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, rate=100.0, max_frames=20)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/stream?streams=btcusdt@aggTrade/btcusdt@trade")) as ws:
            got = await events(ws, 20, "aggTrade")
            got += [e for e in await silent_for(ws, 0.3) if e["data"]["e"] == "aggTrade"]
    received = [(str(e["a"]), e["p"], e["q"], e["f"], e["l"]) for e in (g.get("data", g) for g in got)]
    delivered = server.delivered_trades(exchange="binance")
    assert [(t.id, t.price, t.size, t.seq, t.last_seq) for t in delivered] == received
    assert server.delivered_trades("spot", exchange="bybit") == []
    assert server.generated_trades("binance", "spot", "BTCUSDT") == delivered
    assert server.generated_trades("binance", "usdm", "BTCUSDT") == []


async def _first_events(nursery: trio.Nursery, seed: int, path: str) -> list[Any]:
    server = await start(nursery, seed=seed, rate=200.0, book_rate=10.0)
    async with open_websocket_url(server.binance_ws_base("spot") + path) as ws:
        got = await events(ws, 40 if "aggTrade" in path else 10)
    return sorted(
        (
            e["e"],
            e.get("a", e.get("U")),
            e.get("p"),
            e.get("q"),
            e.get("m"),
            json.dumps(e.get("b")),
            e.get("u"),
        )
        for e in got
    )


@pytest.mark.parametrize(
    "path", ["/ws/btcusdt@aggTrade", "/ws/ethusdt@depth@100ms", "/usdm/public/ws/btcusdt@depth@100ms"]
)
async def test_same_seed_same_tape_and_book(nursery: trio.Nursery, path: str) -> None:
    with trio.fail_after(10):
        first = await _first_events(nursery, 7, path)
        again = await _first_events(nursery, 7, path)
        other = await _first_events(nursery, 8, path)
    assert first == again
    assert first != other


async def test_malformed_frames_on_binance(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=50.0)
    with trio.fail_after(5):
        async with open_websocket_url(spot(server, "/stream?streams=btcusdt@aggTrade")) as ws:
            await get_json(ws)
            server.inject_malformed(6)
            # They follow the next data frame written, in rotation order; good frames (those already on
            # their way and the rest of the tape's cut) come before them and are not kinds.
            kinds: list[str] = []
            good = 0
            while len(kinds) < 6:
                kind = _binance_malformed_kind(await ws.get_message())
                if kind == "good":
                    assert not kinds, "a good frame between the malformed ones"
                    good += 1
                else:
                    kinds.append(kind)
    assert good >= 1 and kinds == ["truncated", "not_json", "unknown", "binary", "bad_price", "no_m"]


def _binance_malformed_kind(message: str | bytes) -> str:
    if isinstance(message, bytes):
        return "binary"
    try:
        data = json.loads(message)["data"]
    except ValueError:
        return "truncated" if message.startswith('{"stream"') else "not_json"
    if data["e"] != "aggTrade":
        return "unknown"
    if data["p"] == "abc":
        return "bad_price"
    if "m" not in data:
        return "no_m"
    return "good"


def test_cli_book_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = sim_config_from_args(
        parser.parse_args(["--skip-every", "7", "--trade-while-unsubscribed", "--book-rate", "25"])
    )
    assert config.faults.skip_every_n_updates == 7
    assert config.trade_while_unsubscribed is True and config.book_rate == 25.0
    defaults = sim_config_from_args(parser.parse_args([]))
    assert defaults.faults.skip_every_n_updates is None and not defaults.trade_while_unsubscribed
    assert defaults.book_rate == 10.0


async def test_cli_prints_binance_urls(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with trio.move_on_after(0.3):
        await run_from_args(parser.parse_args(["--port", "0"]))
    lines = capsys.readouterr().out.splitlines()
    spot_line = next(line for line in lines if line.startswith("binance spot"))
    usdm_line = next(line for line in lines if line.startswith("binance usdm"))
    assert spot_line.split()[2].startswith("ws://127.0.0.1:") and "rest http://127.0.0.1:" in spot_line
    assert usdm_line.split()[2].endswith("/usdm")
    assert lines[-1].startswith("http ")  # still the last line, which scripts wait for
