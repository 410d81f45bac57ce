"""wss through our TLS stream (ssl.SSLObject over memory BIOs) and read coalescing, against an independent
server (trio-websocket on trio's own SSLStream) with a throwaway CA."""

from __future__ import annotations

import functools
import ssl

import pytest
import trio
import trustme
from trio_websocket import WebSocketRequest, serve_websocket

from marketflow.exchanges.ws import FeedError, WsConnection, connect_ws

CA = trustme.CA()


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("127.0.0.1").configure_cert(context)
    return context


def client_context(ca: trustme.CA = CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def start(nursery: trio.Nursery, handler) -> str:  # type: ignore[no-untyped-def]
    server = await nursery.start(
        functools.partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=server_context())
    )
    return f"wss://127.0.0.1:{server.port}/v5/public/linear"


async def collect(conn: WsConnection, count: int) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    calls = 0
    while len(got) < count:
        batch = await conn.receive_messages()
        calls += bool(batch)
        got.extend(batch)
    return got, calls


async def test_every_record_of_a_read_is_decrypted_at_once() -> None:
    """One message is one TLS record: trio's SSLStream returns one record per call, ours all of them."""
    sent = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(200):
            await ws.send_message(f'{{"n":{i}}}')
        sent.set()
        await ws.ping(b"hb")  # answered by the client between data frames
        await ws.send_message("after-ping")
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, handler)
            async with await connect_ws(url, ssl_context=client_context()) as conn:
                await sent.wait()
                await trio.sleep(0.2)  # everything is in the socket buffer now
                first = await conn.receive_messages()
                assert len(first) >= 150, len(first)  # (a few may have come with the handshake)
                rest, _ = await collect(conn, 201 - len(first))
                got = first + rest
                assert got[0] == b'{"n":0}' and got[199] == b'{"n":199}' and got[200] == b"after-ping"
            nursery.cancel_scope.cancel()


async def test_close_code_and_reason_over_tls() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("bye")
        await ws.aclose(code=4000, reason="maintenance")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, handler)
            conn = await connect_ws(url, ssl_context=client_context())
            got: list[bytes] = []
            with pytest.raises(FeedError, match="close code 4000: maintenance"):
                while True:
                    got.extend(await conn.receive_messages())
            assert got == [b"bye"]
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_untrusted_certificate_is_a_named_handshake_failure() -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, handler)
            with pytest.raises(FeedError, match=r"handshake failed.*CERTIFICATE_VERIFY_FAILED"):
                await connect_ws(url, ssl_context=client_context(trustme.CA()))
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("coalesce_s", [0.0, 0.05])
async def test_coalescing_bounds_wake_ups_and_delay(coalesce_s: float) -> None:
    """40 messages 5 ms apart: without coalescing about one wake-up each; with a 50 ms window a handful,
    each message late by at most the window (plus scheduling slack)."""
    sent_at: dict[bytes, float] = {}

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(40):
            payload = f"m{i}"
            sent_at[payload.encode()] = trio.current_time()
            await ws.send_message(payload)
            await trio.sleep(0.005)
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, handler)
            async with await connect_ws(url, ssl_context=client_context(), coalesce_s=coalesce_s) as conn:
                got: list[bytes] = []
                calls = 0
                worst = 0.0
                while len(got) < 40:
                    batch = await conn.receive_messages()
                    now = trio.current_time()
                    calls += bool(batch)
                    got.extend(batch)
                    worst = max([worst, *(now - sent_at[m] for m in batch)])
            nursery.cancel_scope.cancel()
    assert got == [f"m{i}".encode() for i in range(40)]
    if coalesce_s:
        assert calls <= 12, calls
        assert conn.coalesced_waits >= calls - 1
        assert worst < coalesce_s + 0.1
    else:
        assert calls >= 20, calls  # the baseline the window improves on
        assert conn.coalesced_waits == 0
