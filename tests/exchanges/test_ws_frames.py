"""The client's own frame splitter: every byte split, fragmentation, control frames and protocol errors.

A real `websockets` server protocol does the handshake over an in-memory stream; after it, the test
writes raw frame bytes in arbitrary chunks, so the client sees frames cut at every possible boundary.
"""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from marketflow.exchanges.ws import COPY_BELOW, FeedError, WsConnection, open_ws

URL = "ws://127.0.0.1/v5/public/linear"


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


class Peer:
    """The server end: a `websockets` ServerProtocol for the handshake and for reading the client."""

    def __init__(self, stream: trio.testing.MemoryStapledStream) -> None:  # type: ignore[type-arg]
        self.stream = stream
        self.proto = ServerProtocol()

    async def accept(self, trailing: bytes = b"") -> None:
        while True:
            self.proto.receive_data(await self.stream.receive_some(65536))
            events = self.proto.events_received()
            if events and isinstance(events[0], Request):
                self.proto.send_response(self.proto.accept(events[0]))
                await self.stream.send_all(b"".join(self.proto.data_to_send()) + trailing)
                return

    async def received_frames(self) -> list[Frame]:
        with trio.move_on_after(0.5):
            self.proto.receive_data(await self.stream.receive_some(65536))
        return [e for e in self.proto.events_received() if isinstance(e, Frame)]


async def connect(trailing: bytes = b"", max_message: int = 1 << 20) -> tuple[WsConnection, Peer]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept, trailing)
        conn = await open_ws(URL, client_stream, max_message=max_message)
    return conn, peer


async def read_all(conn: WsConnection, count: int) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(30):
        while len(got) < count:
            got.extend(await conn.receive_messages())
    return got


messages = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, b"v" * 70001]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=messages,
    fragment_every=st.integers(min_value=0, max_value=4),
    ping_every=st.integers(min_value=0, max_value=3),
    cut=st.lists(st.integers(min_value=1, max_value=70000), min_size=1, max_size=30),
    behind_handshake=st.integers(min_value=0, max_value=64),
)
def test_any_byte_split_yields_the_same_messages(
    payloads: list[bytes], fragment_every: int, ping_every: int, cut: list[int], behind_handshake: int
) -> None:
    wire = b""
    pings = 0
    for i, payload in enumerate(payloads):
        if fragment_every and i % fragment_every == 0 and len(payload) >= 3:
            third = len(payload) // 3
            wire += frame(0x1, payload[:third], fin=False)
            if ping_every:
                wire += frame(0x9, b"mid-%d" % i)  # control frames may sit between fragments
                pings += 1
            wire += frame(0x0, payload[third : 2 * third], fin=False)
            wire += frame(0x0, payload[2 * third :], fin=True)
        else:
            wire += frame(0x2 if i % 2 else 0x1, payload)
        if ping_every and i % ping_every == 0:
            wire += frame(0x9, b"p%d" % i)
            pings += 1
    wire += frame(0x1, b"end")  # read up to here: every ping before it has been seen

    async def main() -> None:
        head, rest = wire[:behind_handshake], wire[behind_handshake:]
        conn, peer = await connect(trailing=head)
        chunks, at, k = [], 0, 0
        while at < len(rest):
            # Cut sizes as drawn, but at most ~400 pieces, so huge payloads in 1-byte reads stay quick.
            size = max(cut[k % len(cut)], len(rest) // 400)
            chunks.append(rest[at : at + size])
            at += size
            k += 1

        async def feed() -> None:
            for chunk in chunks:
                await peer.stream.send_all(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            got = await read_all(conn, len(payloads) + 1)
        assert got == [*payloads, b"end"]
        assert conn.pings_received == pings
        pongs = [f for f in await peer.received_frames() if f.opcode is Opcode.PONG] if pings else []
        assert len(pongs) == pings

    trio.run(main)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (frame(0x1, b"masked", mask=b"abcd"), "protocol error"),
        (frame(0x1, b"rsv", rsv=0x40), "protocol error"),
        (frame(0x0, b"orphan"), "unexpected continuation frame"),
        (frame(0x1, b"a", fin=False) + frame(0x1, b"b"), "a new message inside a fragmented one"),
        (frame(0x3, b"bad opcode"), "protocol error"),
        (frame(0x1, b"q" * 2000), "protocol error"),
        (frame(0x1, b"q" * 600, fin=False) + frame(0x0, b"q" * 600), "over 1024 bytes"),
    ],
    ids=[
        "masked",
        "reserved-bit",
        "orphan-continuation",
        "interleaved",
        "opcode",
        "too-big",
        "too-big-fragmented",
    ],
)
async def test_bad_frames_fail_with_a_named_error(wire: bytes, error: str) -> None:
    conn, peer = await connect(max_message=1024)
    await peer.stream.send_all(frame(0x1, b"good") + wire)
    got: list[bytes] = []
    with pytest.raises(FeedError, match=error), trio.fail_after(5):
        while True:
            got.extend(await conn.receive_messages())
    assert got[:1] == [b"good"]


async def test_close_frame_is_answered_and_named() -> None:
    conn, peer = await connect()
    close = struct.pack("!H", 4001) + b"going away"
    await peer.stream.send_all(frame(0x1, b"last") + frame(0x8, close))
    got: list[bytes] = []
    with pytest.raises(FeedError, match="close code 4001: going away"), trio.fail_after(5):
        while True:
            got.extend(await conn.receive_messages())
    assert got == [b"last"]
    closes = [f for f in await peer.received_frames() if f.opcode is Opcode.CLOSE]
    assert len(closes) == 1


async def test_a_message_bigger_than_the_copied_buffer_arrives_whole_among_small_ones() -> None:
    conn, peer = await connect(max_message=4 * COPY_BELOW)
    big = bytes(range(256)) * (COPY_BELOW // 128)  # two copy limits: read in many pieces
    wire = frame(0x1, b"before") + frame(0x1, big) + frame(0x1, b"after") + frame(0x1, b"x" * 200)
    got: list[bytes] = []
    with trio.fail_after(5):
        for at in range(0, len(wire), 50_000):
            await peer.stream.send_all(wire[at : at + 50_000])
        while len(got) < 4:
            got.extend(await conn.receive_messages())
    assert got == [b"before", big, b"after", b"x" * 200]


async def test_a_read_cancelled_while_answering_a_ping_keeps_its_messages(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A deadline passing while the client writes its pong (a stalled process, a slow socket) must not lose
    the data frames that same read completed: the next call returns them, and the feed's stale watchdog
    sees that the connection holds data."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        conn = await open_ws(URL, client_stream)

    async def stall() -> None:
        await trio.sleep_forever()  # the server stops taking bytes: the pong write hangs

    pump = client_stream.send_stream.send_all_hook  # moves the client's bytes to the server side
    assert pump is not None
    client_stream.send_stream.send_all_hook = stall
    await peer.stream.send_all(frame(0x9, b"are you there") + frame(0x1, b"trade-1") + frame(0x1, b"trade-2"))
    with trio.move_on_after(1) as scope:
        await conn.receive_messages()
    assert scope.cancelled_caught and trio.current_time() == 1
    assert conn.holds_messages()
    client_stream.send_stream.send_all_hook = pump
    with trio.fail_after(1):
        assert await conn.receive_messages() == [b"trade-1", b"trade-2"]
    assert not conn.holds_messages()
    await peer.stream.send_all(frame(0x1, b"trade-3"))
    with trio.fail_after(1):
        assert await read_all(conn, 1) == [b"trade-3"]
    await pump()  # the pong the cancelled write queued
    assert [f.data for f in await peer.received_frames() if f.opcode == Opcode.PONG] == [b"are you there"]
