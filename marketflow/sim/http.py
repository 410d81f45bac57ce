"""The simulator's wire: HTTP/1.1 requests and responses, and the WebSocket connections they upgrade to.

One port serves both REST and WebSocket: the request head is read here, then `serve_http` either answers
a REST route or hands the raw bytes of an upgrade request to the caller's WebSocket handler, which runs a
`WsConnection`: a reader (client frames → the venue `Session`), a writer (one queue of pre-framed data,
control replies and protocol frames → one `send_all`) and an idle watchdog. The connection is the venue
modules' host: it subscribes to trade and book feeds on their behalf, sends pings and closes.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import attrs
import msgspec
import trio
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from marketflow.sim.book import BookFeed, BookStream, SimBook
from marketflow.sim.faults import MalformedKind, MalformedSchedule, StallGate
from marketflow.sim.market import FrameEncoder, TapeFrame, TradeFeed, WireFrame, channel_key

log = logging.getLogger("marketflow.sim")

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
HEAD_TIMEOUT_S = 30.0
RECEIVE_SIZE = 64 * 1024
MAX_BACKLOG_FRAMES = 100_000  # a client this far behind is cut off, as a real venue would
CLOSE_GRACE_S = 2.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
}


@attrs.frozen
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers, e.g. `(("X-MBX-USED-WEIGHT-1M", "5"),)`."""


RestHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
NOT_FOUND = HttpResponse(404, b'{"retCode":10001,"retMsg":"unknown path"}')


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@attrs.frozen
class Incoming:
    """One request as read off the wire: its raw head (a WebSocket handshake replays it) and parsed form."""

    head: bytes
    version: str
    http: HttpRequest


async def _read_head(stream: trio.abc.Stream, buffer: bytes) -> tuple[bytes, bytes] | None:
    """Read until the end of an HTTP request head: (head including CRLFCRLF, bytes after it); None on EOF."""
    data = bytearray(buffer)
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(data[: end + 4]), bytes(data[end + 4 :])
        if len(data) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        chunk = await stream.receive_some(RECEIVE_SIZE)
        if not chunk:
            return None
        data += chunk


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, lower-cased headers) of a request head."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def http_response(response: HttpResponse, *, keep_alive: bool) -> bytes:
    """The wire bytes of `response`."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
    head = (
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
        f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n{extra}"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + response.body


async def read_request(
    stream: trio.abc.Stream, buffer: bytes, is_websocket: Callable[[str], bool]
) -> tuple[Incoming, bytes] | None:
    """The next request and the bytes after it; a WebSocket path's body is left to the protocol."""
    read = await _read_head(stream, buffer)
    if read is None:
        return None
    head, buffer = read
    method, target, version, headers = _parse_head(head)
    path, _, query = target.partition("?")
    body = b""
    if not is_websocket(path):
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "bad content-length") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise BadRequest(400, "bad content-length")
        while len(buffer) < length:
            chunk = await stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                return None
            buffer += chunk
        body, buffer = buffer[:length], buffer[length:]
    http = HttpRequest(method, path, urllib.parse.parse_qs(query), headers, body)
    return Incoming(head, version, http), buffer


async def serve_http(
    stream: trio.abc.Stream,
    *,
    is_websocket: Callable[[str], bool],
    rest_route: Callable[[str], RestHandler | None],
    serve_websocket: Callable[[trio.abc.Stream, bytes, Incoming], Awaitable[None]],
) -> None:
    """Answer requests on `stream` (keep-alive) until it closes or is upgraded to a WebSocket."""
    buffer = b""
    while True:
        incoming: tuple[Incoming, bytes] | None = None
        with trio.move_on_after(HEAD_TIMEOUT_S):
            try:
                incoming = await read_request(stream, buffer, is_websocket)
            except BadRequest as exc:
                body = msgspec.json.encode({"retCode": 10001, "retMsg": str(exc)})
                await stream.send_all(http_response(HttpResponse(exc.status, body), keep_alive=False))
                return
        if incoming is None:
            return  # the client closed, or sent nothing useful for too long
        request, buffer = incoming
        if is_websocket(request.http.path):
            await serve_websocket(stream, request.head + buffer, request)
            return
        handler = rest_route(request.http.path)
        response = NOT_FOUND if handler is None else await handler(request.http)
        connection = request.http.headers.get("connection", "").lower()
        keep_alive = request.version == "HTTP/1.1" and connection != "close"
        await stream.send_all(http_response(response, keep_alive=keep_alive))
        if not keep_alive:
            return


# -- WebSocket connections ----------------------------------------------------------------------------


@attrs.define
class Counters:
    """The server's running totals, bumped by connections."""

    connections_total: int = 0
    frames_sent: int = 0
    trades_sent: int = 0
    book_frames_sent: int = 0
    subscribes: int = 0
    rejected_subscribes: int = 0
    pings: int = 0
    pings_sent: int = 0
    malformed_sent: int = 0
    drops: int = 0
    rate_limited: int = 0


class Session(Protocol):
    """A venue's side of one WebSocket connection."""

    def on_message(self, data: bytes | str) -> None: ...

    def on_control(self, ping: bool, payload: bytes) -> None:
        """A ping (already answered) or pong frame from the client."""

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]: ...

    async def run(self) -> None:
        """The session's own timers, cancelled when the connection ends."""


class WsOwner(Protocol):
    """What a connection needs from the server that accepted it."""

    counters: Counters
    stall_gate: StallGate
    idle_timeout_s: float
    malformed_every: int | None

    def trade_feed(self, exchange: str, category: str, symbol: str) -> TradeFeed: ...

    def book_feed(self, exchange: str, category: str, symbol: str) -> BookFeed: ...

    def start_feed(self, feed: TradeFeed | BookFeed) -> None: ...

    def note_sent(self, frames: list[TapeFrame]) -> None:
        """Trade frames just written to a socket (for the ground truth)."""


class WsConnection:
    """One client WebSocket: a reader (client frames → session), a writer (queue → socket), a watchdog."""

    def __init__(self, server: WsOwner, stream: trio.abc.Stream, proto: ServerProtocol, number: int) -> None:
        self.server = server
        self.counters = server.counters
        self.number = number
        self.session: Session
        self.malformed = MalformedSchedule(server.malformed_every)
        self._stream = stream
        self._proto = proto
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._outbox: list[TapeFrame | WireFrame | bytes] = []
        self._backlog = 0  # data frames in the outbox
        self._work = trio.Event()
        self._flush = False  # the protocol has bytes of its own to send (ping, pong, close)
        self._drained = trio.Event()
        self._closed = False
        self._closing = False
        self._subscriptions: dict[str, Callable[[], None]] = {}  # channel → how to leave it
        self._fragments: list[bytes] = []
        self._last_activity = trio.current_time()
        self.stamp: Callable[[bytes], bytes] | None = None
        """Set by a venue numbering every message of a connection (Coinbase `sequence_num`): turns each
        queued payload (data frames are then left unframed) into the wire frame, in write order."""

    async def run(self, pipelined: Iterable[object]) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._on_frames(pipelined)
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._idle_watchdog)
                nursery.start_soon(self.session.run)

    def abort(self) -> bool:
        """End the connection now, without a close frame; False if it was already ending."""
        if self._closed or self._scope.cancel_called:
            return False
        self._scope.cancel()
        return True

    def close(self, code: int, reason: str, after: float = 0.0) -> None:
        """Send a close frame `after` seconds from now, then cut the connection (a grace period later)."""
        if self._nursery is not None and not self._closing:
            self._closing = True
            self._nursery.start_soon(self._close_after, code, reason, after)

    def detach(self) -> None:
        """The connection has ended: leave every feed and wake anyone waiting on its queue."""
        self._closed = True
        for leave in self._subscriptions.values():
            leave()
        self._subscriptions.clear()
        self._outbox.clear()
        self._drained.set()

    async def _close_after(self, code: int, reason: str, after: float) -> None:
        if after > 0:
            await trio.sleep(after)
        if self._proto.state is OPEN:
            self._proto.send_close(CloseCode(code), reason)
            self._wake_writer()
        await trio.sleep(CLOSE_GRACE_S)
        self._scope.cancel()

    # -- FrameSink -----------------------------------------------------------------------------------

    def push_frames(self, frames: list[TapeFrame] | list[WireFrame]) -> None:
        if self._closed:
            return
        self._outbox += frames
        self._backlog += len(frames)
        self._work.set()
        if self._backlog > MAX_BACKLOG_FRAMES:
            log.warning(
                "simulator: connection %d is %d frames behind; cutting it", self.number, self._backlog
            )
            self.abort()

    def backlog(self) -> int:
        return self._backlog

    async def wait_backlog_at_most(self, frames: int) -> None:
        while self._backlog > frames and not self._closed:
            await self._drained.wait()

    # -- BybitHost / BinanceHost ---------------------------------------------------------------------

    def send_control(self, payload: bytes) -> None:
        if not self._closed:
            self._outbox.append(payload)
            self._work.set()

    def send_control_later(self, payload: bytes, delay: float) -> None:
        async def later() -> None:
            await trio.sleep(delay)
            self.send_control(payload)

        if self._nursery is not None:
            self._nursery.start_soon(later)

    def send_ping(self, payload: bytes) -> None:
        if self._proto.state is OPEN:
            self._proto.send_ping(payload)
            self.counters.pings_sent += 1
            self._wake_writer()

    def subscribe_trades(
        self, exchange: str, category: str, symbol: str, channel: str, encoder: Callable[[], FrameEncoder]
    ) -> None:
        feed = self.server.trade_feed(exchange, category, symbol)
        feed.subscribe(self, channel, encoder)
        self._subscriptions[channel] = lambda: feed.unsubscribe(self, channel)
        self.server.start_feed(feed)

    def subscribe_book(
        self,
        exchange: str,
        category: str,
        symbol: str,
        channel: str,
        combined: bool,
        factory: Callable[[SimBook], BookStream],
    ) -> None:
        feed = self.server.book_feed(exchange, category, symbol)
        stream = feed.stream(channel, factory)
        first = stream.add_sink(self, combined)
        self._subscriptions[channel_key(channel, combined)] = lambda: stream.remove_sink(self)
        if first is not None:
            self.push_frames([first])
        self.server.start_feed(feed)

    def unsubscribe(self, channel: str) -> None:
        leave = self._subscriptions.pop(channel, None)
        if leave is not None:
            leave()
        # Frames already queued for that channel are dropped, as if the unsubscribe raced nothing.
        self._outbox = [i for i in self._outbox if isinstance(i, bytes) or i.topic != channel]
        self._backlog = sum(1 for i in self._outbox if not isinstance(i, bytes))

    def note_ping(self) -> None:
        self.counters.pings += 1
        self._last_activity = trio.current_time()

    def note_subscribes(self, accepted: int, rejected: int) -> None:
        self.counters.subscribes += accepted
        self.counters.rejected_subscribes += rejected

    def note_rate_limited(self) -> None:
        self.counters.rate_limited += 1

    # -- tasks ---------------------------------------------------------------------------------------

    def _wake_writer(self) -> None:
        self._flush = True
        self._work.set()

    def _on_frames(self, events: Iterable[object]) -> None:
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    self.session.on_message(bytes(frame.data))
                else:
                    self._fragments = [bytes(frame.data)]
            elif opcode is Opcode.CONT:
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    message, self._fragments = b"".join(self._fragments), []
                    self.session.on_message(message)
            elif opcode is Opcode.PING:
                self.counters.pings += 1  # the protocol queued the pong already
                self._last_activity = trio.current_time()
                self._wake_writer()
                self.session.on_control(True, bytes(frame.data))
            elif opcode is Opcode.PONG:
                self.session.on_control(False, bytes(frame.data))
            elif opcode is Opcode.CLOSE:
                self._wake_writer()  # the protocol queued the close reply and the end of stream

    async def _read_loop(self) -> None:
        proto = self._proto
        while True:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                proto.receive_eof()
                self._scope.cancel()
                return
            proto.receive_data(data)
            self._on_frames(proto.events_received())
            if proto.parser_exc is not None:
                self._wake_writer()  # the protocol failed the connection: flush its close frame

    async def _write_loop(self) -> None:
        proto = self._proto
        stream = self._stream
        gate = self.server.stall_gate
        malformed = self.malformed
        while True:
            if not self._outbox and not self._flush:
                self._work = trio.Event()
                await self._work.wait()
            await gate.wait_open()
            items, self._outbox = self._outbox, []
            self._flush = False
            if self._backlog:
                self._backlog = 0
                drained, self._drained = self._drained, trio.Event()
                drained.set()
            chunks = proto.data_to_send()
            end_of_stream = bool(chunks) and chunks[-1] == b""
            if end_of_stream:
                chunks.pop()
            sent: list[TapeFrame] = []
            book_frames = 0
            stamp = self.stamp
            if proto.state is OPEN:
                for item in items:
                    if isinstance(item, TapeFrame):
                        chunks.append(item.wire if stamp is None else stamp(item.wire))
                        sent.append(item)
                        if malformed.armed:
                            due = malformed.after_data_frame()
                            if due:
                                self._send_malformed(item, due)
                                chunks += proto.data_to_send()
                    elif isinstance(item, WireFrame):
                        chunks.append(item.wire if stamp is None else stamp(item.wire))
                        book_frames += 1
                    elif stamp is not None:
                        chunks.append(stamp(item))
                    else:
                        proto.send_text(item)
                        chunks += proto.data_to_send()
            if chunks:
                await stream.send_all(b"".join(chunks))
                self._last_activity = trio.current_time()
                if sent:
                    self.server.note_sent(sent)
                self.counters.book_frames_sent += book_frames
            if end_of_stream:
                self._scope.cancel()
                return

    def _send_malformed(self, after: TapeFrame, count: int) -> None:
        ts_ms = time.time_ns() // 1_000_000
        for _ in range(count):
            payload, binary = self.session.malformed_frame(self.malformed.next_kind(), after.symbol, ts_ms)
            if binary:
                self._proto.send_binary(payload)
            else:
                self._proto.send_text(payload)
        self.counters.malformed_sent += count

    async def _idle_watchdog(self) -> None:
        idle = self.server.idle_timeout_s
        while True:
            deadline = self._last_activity + idle
            if trio.current_time() >= deadline:
                break
            await trio.sleep_until(deadline)
        log.info("simulator: closing connection %d: idle for %.0f s", self.number, idle)
        self._closing = True
        await self._close_after(CloseCode.NORMAL_CLOSURE, "idle timeout", 0.0)


__all__ = [
    "NOT_FOUND",
    "BadRequest",
    "Counters",
    "HttpRequest",
    "HttpResponse",
    "Incoming",
    "RestHandler",
    "Session",
    "WsConnection",
    "WsOwner",
    "http_response",
    "read_request",
    "serve_http",
    "ws_text_frame",
]
