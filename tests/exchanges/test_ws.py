"""The Sans-I/O WebSocket client on trio streams, against an independent server (trio-websocket)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from marketflow.exchanges.ws import FeedError, WsConnection, connect_ws

Handler = Callable[[WebSocketRequest], Awaitable[None]]


async def start_server(nursery: trio.Nursery, handler: Handler) -> str:
    server = await nursery.start(
        functools.partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
    )
    return f"ws://127.0.0.1:{server.port}/v5/public/spot"


async def collect(conn: WsConnection, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        got.extend(await conn.receive_messages())
    return got


async def test_echo_burst_and_batching() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        first = await ws.get_message()
        for i in range(500):
            await ws.send_message(f'{{"n":{i},"echo":{first}}}')
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, handler)
            async with await connect_ws(url) as conn:
                await conn.send_text(b'"hello"')
                got = await collect(conn, 500)
                assert got[0] == b'{"n":0,"echo":"hello"}'
                assert got[-1] == b'{"n":499,"echo":"hello"}'
                assert all(type(m) is bytes for m in got)
                assert conn.messages_received == 500
            nursery.cancel_scope.cancel()


async def test_frames_right_behind_the_handshake_are_kept() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        # Sent immediately after accepting: often in the same TCP read as the 101 response.
        await ws.send_message("first")
        await ws.send_message("second")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, handler)
            for _ in range(20):
                async with await connect_ws(url) as conn:
                    assert await collect(conn, 2) == [b"first", b"second"]
            nursery.cancel_scope.cancel()


async def test_server_ping_is_answered() -> None:
    pong_payloads: list[bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.ping(b"hb-1")  # waits for the matching pong
        pong_payloads.append(b"hb-1")
        await ws.send_message("after-pong")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, handler)
            async with await connect_ws(url) as conn:
                assert await collect(conn, 1) == [b"after-pong"]
                assert conn.pings_received == 1
            assert pong_payloads == [b"hb-1"]
            nursery.cancel_scope.cancel()


async def test_server_close_raises_feed_error_with_code() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("bye")
        await ws.aclose(code=4000, reason="maintenance")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, handler)
            conn = await connect_ws(url)
            got: list[bytes] = []
            with pytest.raises(FeedError, match="close code 4000: maintenance"):
                while True:
                    got.extend(await conn.receive_messages())
            assert got == [b"bye"]
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_rejected_handshake_and_refused_connection() -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(404, body=b"no such path")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, handler)
            with pytest.raises(FeedError, match="HTTP 404"):
                await connect_ws(url)
            nursery.cancel_scope.cancel()
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()
        with pytest.raises(FeedError, match=f"ws://127.0.0.1:{port}/x: cannot connect"):
            await connect_ws(f"ws://127.0.0.1:{port}/x")
        with pytest.raises(FeedError, match="not a WebSocket URL"):
            await connect_ws("http://127.0.0.1/x")
