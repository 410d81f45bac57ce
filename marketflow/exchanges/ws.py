"""WebSocket client transport: the `websockets` Sans-I/O protocol driven on trio streams.

Measured on these machines at ~400k frames/s (trio-websocket: ~52k), because one socket read is parsed
into every complete message it holds and handed over as one list — the caller pays one trio wake-up per
read, not per frame. Ping frames are answered by the protocol object itself; what it wants to send is
flushed after every read.
"""

from __future__ import annotations

import os
import ssl
from types import TracebackType

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidURI, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

READ_SIZE = 256 * 1024
COALESCE_BELOW = 64 * 1024
"""A read smaller than this means the stream is not bursting: the next read may wait to coalesce."""
COPY_BELOW = 2 * READ_SIZE
"""Buffers up to this size are copied once per read for the short path of `_split`."""
_FAST_FIRST_BYTES = frozenset({0x00, 0x01, 0x02, 0x80, 0x81, 0x82})
"""First header bytes the fast path takes: continuation/text/binary, FIN or not, no reserved bits."""
MAX_MESSAGE = 16 * 1024 * 1024
CLOSE_WAIT_S = 2.0


class FeedError(Exception):
    """A feed connection failed: the message names the endpoint and the cause (`URL: reason`).

    It is an expected failure of the network or the venue (DNS, refused, TLS, timeout, close), not a
    bug: `operational` tells a supervisor to log it as one line, without a traceback.
    """

    operational = True

    @property
    def log_fields(self) -> dict[str, str]:
        """`url` and `reason` for a log line, split from the message."""
        url, sep, reason = str(self).partition(": ")
        if sep and "://" in url:
            return {"url": url, "reason": reason}
        return {"reason": str(self)}


class TlsStream(trio.abc.Stream):
    """TLS over a trio socket with `ssl.SSLObject` and memory BIOs, draining every decrypted record a
    socket read completes in one call.

    `trio.SSLStream.receive_some` returns one TLS record per call, and a venue writes one record per
    WebSocket message: with it, a client pays one trio wake-up per frame however much has arrived.
    Here one socket read (up to 256 KiB) is decrypted completely and returned at once.
    """

    def __init__(self, tcp: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str) -> None:
        self._tcp = tcp
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._send_lock = trio.StrictFIFOLock()
        self._plain = b""
        """Decrypted bytes of a call cancelled while it answered the peer (a key update): returned next."""

    @property
    def holds_data(self) -> bool:
        """Bytes decrypted already wait for the next `receive_some` (which returns them at once)."""
        return bool(self._plain) or self._ssl.pending() > 0

    async def do_handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._tcp.receive_some(READ_SIZE)
                if not data:
                    raise trio.BrokenResourceError("connection closed during the TLS handshake") from None
                self._incoming.write(data)
            else:
                await self._flush()
                return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._plain:
            plain, self._plain = self._plain, b""
            return plain
        while True:
            chunks: list[bytes] = []
            try:
                while True:
                    chunk = self._ssl.read(READ_SIZE)
                    if not chunk:  # close_notify
                        return b"".join(chunks)
                    chunks.append(chunk)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b"".join(chunks)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            if self._outgoing.pending:  # e.g. a TLS 1.3 key update answered
                # Decrypted bytes are out of the SSL object: a cancellation of this write must not lose them.
                self._plain = b"".join(chunks)
                await self._flush()
                self._plain = b""
            if chunks:
                return b"".join(chunks)
            data = await self._tcp.receive_some(READ_SIZE)
            if not data:
                return b""  # EOF without close_notify: what most servers do; the caller sees EOF
            self._incoming.write(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            await self._tcp.send_all(self._outgoing.read())

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            async with self._send_lock:
                await self._tcp.send_all(pending)

    async def wait_send_all_might_not_block(self) -> None:
        await self._tcp.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    async def aclose(self) -> None:
        await self._tcp.aclose()


class WsConnection:
    """One client WebSocket connection. Use `connect_ws()`; close with `aclose()` or `async with`."""

    def __init__(
        self,
        url: str,
        stream: trio.abc.Stream,
        protocol: ClientProtocol,
        *,
        buffered: bytes = b"",
        max_message: int = MAX_MESSAGE,
        coalesce_s: float = 0.0,
    ) -> None:
        self.url = url
        self._buffer = bytearray(buffered)
        """Bytes read but not yet cut into frames (at most one partial frame between reads)."""
        self._unparsed = bool(buffered)
        self._max_message = max_message
        self._coalesce_s = coalesce_s
        self._small_read = False
        self.coalesced_waits = 0
        self._fragment_size = 0
        self._closing = False
        """`start_close()` sent our close frame; the server's frames are still read until it answers."""
        self._failure: FeedError | None = None
        """Set when a read ended in an error after completing messages: raised by the next call."""
        self._ready: list[bytes] = []
        """Messages completed by a call that was cancelled while it answered the server (a pong, our half
        of a close): the next call returns them first, so a deadline passing then loses no data."""
        self._stream = stream
        self._protocol = protocol
        self._send_lock = trio.StrictFIFOLock()
        self._fragments: list[bytes] = []
        self.bytes_received = 0
        self.messages_received = 0
        self.pings_received = 0

    async def __aenter__(self) -> WsConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def receive_messages(self) -> list[bytes]:
        """Read once from the socket and return every complete data message it completed.

        The list may be empty when the read held only control frames (pings) or part of a message —
        that still proves the connection is alive, which is what the caller's stale-data watchdog wants.
        Raises `FeedError` when the connection closes or breaks.
        """
        if self._ready:
            ready, self._ready = self._ready, []
            return ready
        if self._failure is not None:
            raise self._failure
        if self._unparsed:
            self._unparsed = False
        else:
            if self._small_read and self._coalesce_s > 0:
                # The last read was small: let frames gather for a bounded moment, so a steady stream
                # of small frames costs one wake-up per `coalesce_s`, not one per frame. A full read
                # (a burst) never waits; the added latency is at most `coalesce_s`.
                self.coalesced_waits += 1
                await trio.sleep(self._coalesce_s)
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise FeedError(f"{self.url}: connection lost: {exc!r}") from exc
            if not data:
                self._protocol.receive_eof()
                raise FeedError(f"{self.url}: connection closed by the server (EOF){self._close_detail()}")
            self.bytes_received += len(data)
            self._small_read = len(data) < COALESCE_BELOW
            self._buffer += data
        messages = self._split()
        protocol = self._protocol
        if protocol.writes:
            self._ready = messages  # kept if the write below is cancelled
            try:
                await self._flush()
            except FeedError as exc:  # the messages read before it are still delivered
                self._failure = exc
            self._ready = []
        if self._failure is None:
            if protocol.parser_exc is not None:
                self._failure = FeedError(f"{self.url}: protocol error: {protocol.parser_exc}")
                self._failure.__cause__ = protocol.parser_exc
            elif self._ended():
                self._failure = FeedError(f"{self.url}: server closed the connection{self._close_detail()}")
        if self._failure is not None and not messages:
            raise self._failure
        # Messages completed before a failure in the same read are delivered; the failure comes next call.
        return messages

    def holds_messages(self) -> bool:
        """Data read already waits for the next `receive_messages` (a call cancelled after its read)."""
        return bool(self._ready) or (isinstance(self._stream, TlsStream) and self._stream.holds_data)

    def _split(self) -> list[bytes]:
        """Cut the buffered bytes into frames: data frames here, every other frame through `websockets`.

        The fast path takes only what a server sends all day — unmasked text/binary/continuation frames
        with no reserved bits (no extension is negotiated) — for about a fifth of the protocol object's
        per-frame cost. Each control frame or anything unusual (ping, close, a masked or reserved-bit
        frame, an unknown opcode) is handed, exactly that frame's bytes, to the protocol object, which
        answers pings, runs the closing handshake and names protocol errors as before; it always sees a
        frame boundary, because it is given whole frames only.
        """
        buf = self._buffer
        size = len(buf)
        at = 0
        messages: list[bytes] = []
        max_message = self._max_message
        # Small frames are sliced from one bytes copy of the buffer (one allocation each, not two); a
        # buffer holding part of a big message is not copied on every read.
        data = bytes(buf) if size <= COPY_BELOW else b""
        view = memoryview(buf)
        try:
            while size - at >= 2:
                b0 = buf[at]
                if b0 == 0x81 and data and not self._fragments:
                    # A whole unmasked text message, what a venue sends all day: the short way.
                    length = buf[at + 1]
                    if length < 126 and length <= max_message:
                        end = at + 2 + length
                        if end > size:
                            break
                        messages.append(data[at + 2 : end])
                        at = end
                        continue
                    if length == 126 and size - at >= 4:
                        length = (buf[at + 2] << 8) | buf[at + 3]
                        end = at + 4 + length
                        if length <= max_message:  # else the general path below refuses it
                            if end > size:
                                break
                            messages.append(data[at + 4 : end])
                            at = end
                            continue
                length = buf[at + 1]  # mask bit clear on the fast path, so this is the 7-bit length
                head = 2
                if length == 126:
                    if size - at < 4:
                        break
                    length = (buf[at + 2] << 8) | buf[at + 3]
                    head = 4
                elif length == 127:
                    if size - at < 10:
                        break
                    length = int.from_bytes(view[at + 2 : at + 10], "big")
                    head = 10
                elif length > 127:
                    head = 0  # masked, which a server must not do: the protocol object refuses it
                if head and b0 in _FAST_FIRST_BYTES and length <= max_message:
                    end = at + head + length
                    if end > size:
                        break
                    payload = bytes(view[at + head : end])
                    at = end
                    if b0 & 0x0F:  # text or binary
                        if self._fragments:
                            self._failure = FeedError(
                                f"{self.url}: protocol error: a new message inside a fragmented one"
                            )
                            break
                        if b0 & 0x80:
                            messages.append(payload)
                        else:
                            self._fragments = [payload]
                            self._fragment_size = length
                        continue
                    if not self._fragments:
                        self._failure = FeedError(
                            f"{self.url}: protocol error: unexpected continuation frame"
                        )
                        break
                    self._fragment_size += length
                    if self._fragment_size > max_message:
                        self._failure = FeedError(
                            f"{self.url}: protocol error: message over {max_message} bytes"
                        )
                        break
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        messages.append(b"".join(self._fragments))
                        self._fragments = []
                    continue
                # Slow path: one whole frame (or, when it is malformed, everything left) to `websockets`.
                whole = self._frame_end(view, at, size)
                if whole is None:
                    break
                self._protocol.receive_data(bytes(view[at:whole]))
                at = whole
                for event in self._protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.PING:
                        self.pings_received += 1
                if self._protocol.parser_exc is not None or self._ended():
                    at = size
                    break
        finally:
            view.release()
        if at:
            del buf[:at]
        self.messages_received += len(messages)
        return messages

    def _frame_end(self, view: memoryview, at: int, size: int) -> int | None:
        """Where the frame at `at` ends, None if it is not complete yet; `size` when it cannot be sized."""
        b1 = view[at + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if size - at < 4:
                return None
            length = int.from_bytes(view[at + 2 : at + 4], "big")
            head = 4
        elif length == 127:
            if size - at < 10:
                return None
            length = int.from_bytes(view[at + 2 : at + 10], "big")
            head = 10
        if b1 & 0x80:
            head += 4
        if length > self._max_message:
            return size  # the protocol object refuses it from the header alone
        end = at + head + length
        return end if end <= size else None

    async def send_text(self, payload: bytes | str) -> None:
        """Send one text message."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._protocol.send_text(data)
        await self._flush()

    async def start_close(self) -> None:
        """Send our close frame and keep the socket: `receive_messages()` goes on delivering what the
        server sent before it read our close, and raises `FeedError` once its close reply (or EOF) comes."""
        if self._protocol.state is State.OPEN:
            self._closing = True
            self._protocol.send_close(1000)
            await self._flush()

    def _ended(self) -> bool:
        """Nothing more will be delivered: the connection is closed, or closing for any reason other than
        our own close frame still waiting for the server's reply (its frames keep coming until then)."""
        protocol = self._protocol
        if protocol.state is State.OPEN:
            return False
        return not (self._closing and protocol.state is State.CLOSING and protocol.close_rcvd is None)

    async def send_ping(self, payload: bytes = b"") -> None:
        self._protocol.send_ping(payload)
        await self._flush()

    async def aclose(self) -> None:
        """Close politely (close frame, short wait for the server's EOF), then drop the socket."""
        with trio.CancelScope(shield=True):
            protocol = self._protocol
            try:
                if protocol.state is State.OPEN:
                    protocol.send_close(1000)
                    await self._flush()
                    with trio.move_on_after(CLOSE_WAIT_S):
                        while True:
                            data = await self._stream.receive_some(READ_SIZE)
                            if not data:
                                break
                            protocol.receive_data(data)
                            protocol.events_received()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, FeedError):
                pass
            finally:
                await trio.aclose_forcefully(self._stream)

    async def _flush(self) -> None:
        writes = self._protocol.data_to_send()
        if not writes:
            return
        payload = b"".join(writes)
        if not payload:
            return
        async with self._send_lock:
            try:
                await self._stream.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise FeedError(f"{self.url}: send failed: {exc!r}") from exc

    def _close_detail(self) -> str:
        rcvd = self._protocol.close_rcvd
        if rcvd is None:
            return ""
        return f" (close code {rcvd.code}{': ' + rcvd.reason if rcvd.reason else ''})"


async def connect_ws(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message: int = MAX_MESSAGE,
    coalesce_s: float = 0.0,
) -> WsConnection:
    """Open a WebSocket to `url` (ws:// or wss://) and complete the opening handshake.

    The caller bounds the time with `trio.fail_after`. Every failure is a `FeedError` naming the URL.
    """
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        raise FeedError(f"{url}: not a WebSocket URL: {exc}") from exc
    try:
        tcp = await trio.open_tcp_stream(uri.host, uri.port)
    except OSError as exc:
        raise FeedError(f"{url}: cannot connect: {_connect_reason(exc)}") from exc
    stream: trio.abc.Stream = tcp
    try:
        tcp.setsockopt(6, 1, 1)  # TCP_NODELAY: control messages are tiny and latency-sensitive
        if uri.secure:
            context = ssl_context or ssl.create_default_context()
            tls = TlsStream(tcp, context, server_hostname=uri.host)
            await tls.do_handshake()
            stream = tls
        return await open_ws(url, stream, max_message=max_message, coalesce_s=coalesce_s)
    except FeedError:
        await trio.aclose_forcefully(stream)
        raise
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(stream)
        raise FeedError(f"{url}: handshake failed: {exc!r}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


def _connect_reason(exc: OSError) -> str:
    """trio says "all attempts to connect to H:P failed" and keeps why in its cause: say both."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        why = sorted(
            {os.strerror(e.errno) if e.errno else str(e) for e in cause.exceptions if isinstance(e, OSError)}
        )
        if why:
            return f"{exc}: {', '.join(why)}"
    return str(exc)


async def open_ws(
    url: str, stream: trio.abc.Stream, *, max_message: int = MAX_MESSAGE, coalesce_s: float = 0.0
) -> WsConnection:
    """Run the opening handshake for `url` over an already connected `stream`."""
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        raise FeedError(f"{url}: not a WebSocket URL: {exc}") from exc
    protocol = ClientProtocol(uri, max_size=max_message)
    protocol.send_request(protocol.connect())
    await stream.send_all(b"".join(protocol.data_to_send()))
    buffered = await _read_handshake(url, stream, protocol)
    return WsConnection(
        url, stream, protocol, buffered=buffered, max_message=max_message, coalesce_s=coalesce_s
    )


async def _read_handshake(url: str, stream: trio.abc.Stream, protocol: ClientProtocol) -> bytes:
    """Read until the handshake response; return the bytes that arrived right behind it.

    Only the response's head is given to the protocol object, so its frame parser stays at a frame
    boundary with nothing buffered: the connection cuts frames itself from there on.
    """
    data = b""
    while True:
        chunk = await stream.receive_some(READ_SIZE)
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head, rest = data[: end + 4], data[end + 4 :]
            protocol.receive_data(head)
            events = protocol.events_received()
            if not any(isinstance(e, Response) for e in events) and protocol.handshake_exc is None:
                # Not a 101: the refusal has a body; let the protocol read it to the end.
                protocol.receive_data(rest)
                while not (events := events + protocol.events_received()) and protocol.handshake_exc is None:
                    more = await stream.receive_some(READ_SIZE)
                    if not more:
                        protocol.receive_eof()
                        break
                    protocol.receive_data(more)
            for event in events:
                if isinstance(event, Response):
                    if protocol.handshake_exc is not None:
                        exc = protocol.handshake_exc
                        status = event.status_code
                        raise FeedError(f"{url}: handshake rejected (HTTP {status}): {exc}") from exc
                    return rest
            if protocol.handshake_exc is not None:
                exc = protocol.handshake_exc
                raise FeedError(f"{url}: handshake failed: {exc}") from exc
            raise FeedError(f"{url}: connection closed during the handshake")
        if not chunk:
            raise FeedError(f"{url}: connection closed during the handshake")
        if len(data) > 65536:
            raise FeedError(f"{url}: handshake failed: no end of the HTTP response head in 64 KiB")


__all__ = ["FeedError", "WsConnection", "connect_ws", "open_ws", "InvalidHandshake", "ProtocolError"]
