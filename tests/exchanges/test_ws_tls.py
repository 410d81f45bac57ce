"""wss through our TLS stream (ssl.SSLObject over memory BIOs) and read coalescing, against an independent
server (trio-websocket on trio's own SSLStream) with a throwaway CA."""

from __future__ import annotations

import fcntl
import functools
import math
import ssl
import struct
import termios

import pytest
import trio
import trustme
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

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


SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in the send queue not yet sent


def queued(ws: WebSocketConnection, request: int) -> int:
    """Bytes of the server's TCP socket not yet acknowledged (TIOCOUTQ) or not yet sent (SIOCOUTQNSD)."""
    sock = ws._stream.transport_stream.socket  # trio-websocket's SSLStream over a trio socket
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


async def delivered(ws: WebSocketConnection, request: int = termios.TIOCOUTQ) -> None:
    """Until the server's kernel has passed on every byte (to the client's, on loopback); a condition,
    polled without moving the (autojump) clock."""
    while queued(ws, request):
        await trio.lowlevel.checkpoint()


async def collect(conn: WsConnection, count: int) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    calls = 0
    while len(got) < count:
        batch = await conn.receive_messages()
        calls += bool(batch)
        got.extend(batch)
    return got, calls


async def test_every_record_of_a_read_is_decrypted_at_once(autojump_clock: trio.abc.Clock) -> None:
    """One message is one TLS record: trio's SSLStream returns one record per call, ours all of them."""
    connected = trio.Event()
    sent = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await connected.wait()  # nothing rides along with the handshake response
        for i in range(200):
            await ws.send_message(f'{{"n":{i}}}')
        await delivered(ws)
        sent.set()
        await ws.ping(b"hb")  # returns once the client's next read has answered it
        await ws.send_message("after-ping")
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, handler)
            async with await connect_ws(url, ssl_context=client_context()) as conn:
                connected.set()
                await sent.wait()  # all 200 messages are in the client's socket now
                first = await conn.receive_messages()
                assert len(first) == 200  # one call: every record of the read decrypted
                rest, _ = await collect(conn, 1)
                got = first + rest
                assert got[0] == b'{"n":0}' and got[199] == b'{"n":199}' and got[200] == b"after-ping"
                assert conn.pings_received == 1
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
async def test_coalescing_bounds_wake_ups_and_delay(
    coalesce_s: float, autojump_clock: trio.abc.Clock
) -> None:
    """40 messages 7 ms apart on a virtual clock: without coalescing one wake-up each, on arrival; with a
    50 ms window one read per window, each message delivered at the end of the window it arrived in."""
    gap_s = 0.007  # never a multiple of the window below 40 messages: no arrival ties with a read
    sent_at: dict[bytes, float] = {}
    connected = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await connected.wait()
        for i in range(40):
            payload = f"m{i}"
            sent_at[payload.encode()] = trio.current_time()
            await ws.send_message(payload)
            await delivered(ws, SIOCOUTQNSD)  # on its way to the client before virtual time moves on
            await trio.sleep(gap_s)
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start(nursery, handler)
            async with await connect_ws(url, ssl_context=client_context(), coalesce_s=coalesce_s) as conn:
                connected.set()
                opened = trio.current_time()
                got: list[bytes] = []
                reads: list[tuple[float, list[bytes]]] = []
                while len(got) < 40:
                    batch = await conn.receive_messages()
                    reads.append((trio.current_time(), batch))
                    got.extend(batch)
            nursery.cancel_scope.cancel()
    assert got == [f"m{i}".encode() for i in range(40)]
    if not coalesce_s:
        assert [len(batch) for _, batch in reads] == [1] * 40  # one wake-up per message ...
        assert all(at == sent_at[batch[0]] for at, batch in reads)  # ... the instant it was sent
        assert conn.coalesced_waits == 0
        return
    # Message i is sent at i * 7 ms; the reads come at 0, 50, 100, ... 300 ms and each takes what
    # arrived since the previous one.
    windows = [round((at - opened) / coalesce_s) for at, _ in reads]
    assert windows == list(range(7))
    assert [at - opened for at, _ in reads] == pytest.approx([n * coalesce_s for n in range(7)])
    expected = [[i for i in range(40) if n == math.ceil(round(i * gap_s / coalesce_s, 9))] for n in range(7)]
    assert [[int(m[1:]) for m in batch] for _, batch in reads] == expected
    assert conn.coalesced_waits == len(reads) - 1
