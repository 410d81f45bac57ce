"""The simulator's server: one TCP port, HTTP/1.1 routed by path, WebSocket upgrades on venue WS paths.

The request head is read here (so REST and WebSocket share the port); a WebSocket upgrade on a known path
is handed to the `websockets` Sans-I/O `ServerProtocol`, which then parses client frames, answers protocol
pings and runs the close handshake. Market-data frames are framed once per published frame (server frames
are unmasked and no extension is negotiated, so their bytes are the same for every subscriber) and each
connection writes a whole queue of them with one `send_all`.
"""

from __future__ import annotations

import errno
import functools
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import attrs
import msgspec
import trio
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from marketflow.sim import bybit
from marketflow.sim.faults import (
    Faults,
    MalformedKind,
    MalformedSchedule,
    StallGate,
    run_scheduled_faults,
    strings,
)
from marketflow.sim.market import (
    MAX_TRADES_PER_FRAME,
    Market,
    SimTrade,
    TapeFrame,
    TradeFeed,
    TradeRow,
    to_sim_trades,
)

log = logging.getLogger("marketflow.sim")
_protocol_log = logging.getLogger("marketflow.sim.websocket")  # websockets logs every open/close at INFO

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
HEAD_TIMEOUT_S = 30.0
RECEIVE_SIZE = 64 * 1024
MAX_CLIENT_MESSAGE = 1024 * 1024
MAX_BACKLOG_FRAMES = 100_000  # a client this far behind is cut off, as a real venue would
CLOSE_GRACE_S = 2.0
_SYMBOL = re.compile(r"[A-Z0-9]+")
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_CLIENT_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)


def _check_range(_: object, attribute: attrs.Attribute[tuple[int, int]], value: tuple[int, int]) -> None:
    low, high = value
    if not 1 <= low <= high <= MAX_TRADES_PER_FRAME:
        raise ValueError(f"{attribute.name} must satisfy 1 <= low <= high <= 1024, got {value!r}")


def _check_symbols(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for symbol in value:
        if not _SYMBOL.fullmatch(symbol):
            raise ValueError(f"symbols: {symbol!r} is not an upper-case native symbol like BTCUSDT")


@attrs.frozen
class SimConfig:
    """How the simulator listens, what it lists, how fast it trades and which faults it injects."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    rate: float = attrs.field(default=10.0, validator=attrs.validators.ge(0.0))
    """publicTrade frames per second per subscribed topic; 0 = as fast as the clients read (benchmarks)."""
    symbols: tuple[str, ...] = attrs.field(
        default=("BTCUSDT", "ETHUSDT"), converter=strings, validator=_check_symbols
    )
    max_frames: int | None = None
    """Per topic: stop generating after this many frames (connections stay open)."""
    spot_trades_per_frame: tuple[int, int] = attrs.field(default=(1, 8), validator=_check_range)
    linear_trades_per_frame: tuple[int, int] = attrs.field(default=(1, 3), validator=_check_range)
    idle_timeout_s: float = attrs.field(default=600.0, validator=attrs.validators.gt(0.0))
    faults: Faults = Faults()
    record_delivered: bool = True
    """Keep every delivered trade for `delivered_trades()`; turn off for long runs and benchmarks."""


@attrs.frozen
class SimStatistics:
    connections: int
    connections_total: int
    frames_sent: int
    trades_sent: int
    subscribes: int
    rejected_subscribes: int
    pings: int
    malformed_sent: int
    drops: int


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


RestHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
NOT_FOUND = HttpResponse(404, b'{"retCode":10001,"retMsg":"unknown path"}')


class Session(Protocol):
    """A venue's side of one WebSocket connection."""

    def on_message(self, data: bytes | str) -> None: ...

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]: ...


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def _framed(encode: Callable[[list[TradeRow], int], bytes]) -> Callable[[list[TradeRow], int], bytes]:
    return lambda rows, ts: ws_text_frame(encode(rows, ts))


@attrs.frozen
class _Incoming:
    head: bytes
    version: str
    http: HttpRequest

    @property
    def path(self) -> str:
        return self.http.path


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def _read_head(stream: trio.abc.Stream, buffer: bytes) -> tuple[bytes, bytes] | None:
    """Read until the end of an HTTP request head: (head including CRLFCRLF, bytes after it); None on EOF."""
    data = bytearray(buffer)
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(data[: end + 4]), bytes(data[end + 4 :])
        if len(data) > MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")
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
        raise _BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def _http_response(response: HttpResponse, *, keep_alive: bool) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}
    head = (
        f"HTTP/1.1 {response.status} {reason.get(response.status, 'Status')}\r\n"
        f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + response.body


class SimServer:
    """An offline exchange speaking Bybit v5's public WebSocket protocol (and, later, more venues).

    `nursery.start(server.run)` binds and returns once the port is known; the server runs until cancelled.
    """

    def __init__(self, config: SimConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.host = "127.0.0.1" if config.host in ("", "0.0.0.0", "::") else config.host
        self.port = config.port
        self.market = Market(config.seed)
        self.rest_routes: dict[str, RestHandler] = {}
        self._ws_routes: dict[str, Callable[[_WsConnection], Session]] = {
            path: self._bybit_session_factory(category) for path, category in bybit.WS_PATHS.items()
        }
        self._rules = bybit.BybitRules(
            symbols=frozenset(config.symbols),
            reject_topics=frozenset(config.faults.reject_topics),
            slow_pong_s=config.faults.slow_pong_s,
        )
        self._feeds: dict[tuple[str, str], TradeFeed] = {}
        self._connections: set[_WsConnection] = set()
        self._delivered: list[TapeFrame] = []
        self._stall = StallGate()
        self._nursery: trio.Nursery | None = None
        self._numbers = 0
        self.connections_total = self.frames_sent = self.trades_sent = 0
        self.subscribes = self.rejected_subscribes = self.pings = self.malformed_sent = self.drops = 0

    # -- addresses -----------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def bybit_ws_url(self, category: str) -> str:
        """The full stream URL of a Bybit category, e.g. `ws://127.0.0.1:PORT/v5/public/spot`."""
        if category not in bybit.CATEGORIES:
            raise ValueError(f"unknown Bybit category {category!r}; expected one of {bybit.CATEGORIES}")
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{bybit.ws_path(category)}"

    def add_rest_route(self, path: str, handler: RestHandler) -> None:
        """Answer HTTP requests on `path` (any method, query ignored for routing) with `handler`."""
        self.rest_routes[path] = handler

    # -- ground truth, statistics, runtime faults -----------------------------------------------------

    def delivered_trades(self, category: str | None = None) -> list[SimTrade]:
        """Every trade written to at least one client socket, in generation order, once each."""
        if not self.config.record_delivered:
            raise RuntimeError("delivered trades are not kept: SimConfig.record_delivered is False")
        return to_sim_trades(self._delivered, category)

    def generated_count(self) -> int:
        """Trades generated so far, delivered or not."""
        return self.market.trades_generated

    @property
    def connections(self) -> int:
        return len(self._connections)

    def statistics(self) -> SimStatistics:
        return SimStatistics(
            connections=len(self._connections),
            connections_total=self.connections_total,
            frames_sent=self.frames_sent,
            trades_sent=self.trades_sent,
            subscribes=self.subscribes,
            rejected_subscribes=self.rejected_subscribes,
            pings=self.pings,
            malformed_sent=self.malformed_sent,
            drops=self.drops,
        )

    def drop_connections(self) -> int:
        """Abort every client connection's TCP without a WebSocket close frame; return how many."""
        dropped = 0
        for conn in list(self._connections):
            if conn.abort():
                dropped += 1
        self.drops += dropped
        return dropped

    def stall(self, seconds: float) -> None:
        """Every connection sends nothing (no data, no pongs) for `seconds`; queued frames follow after."""
        self._stall.stall(seconds)

    def inject_malformed(self, count: int = 1) -> None:
        """Each current connection follows its next data frame with `count` malformed frames."""
        for conn in self._connections:
            conn.malformed.inject(count)

    # -- serving -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        for extra in listeners[1:]:
            if extra.socket.getsockname()[1] != self.port:  # port 0 on a dual-stack name: keep one port
                listeners.remove(extra)
                await extra.aclose()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            faults = self.config.faults
            if faults.drop_every_s is not None or faults.stall_every_s is not None:
                nursery.start_soon(
                    functools.partial(
                        run_scheduled_faults, faults, drop=self.drop_connections, stall=self.stall
                    )
                )
            log.info("simulator listening on %s", self.http_url)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                        raise
                    log.warning("simulator: accept failed (%s); retrying shortly", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._handle_stream, stream)

    async def _handle_stream(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.ssl_context, server_side=True, https_compatible=True)
        try:
            await self._serve(stream)
        except* _CLIENT_GONE as group:
            log.debug("simulator: client went away: %r", group.exceptions[0])
        except* Exception:
            log.exception("simulator: connection failed; dropping it")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        buffer = b""
        while True:  # HTTP keep-alive; a WebSocket upgrade ends the loop
            incoming: tuple[_Incoming, bytes] | None = None
            with trio.move_on_after(HEAD_TIMEOUT_S):
                try:
                    incoming = await self._read_request(stream, buffer)
                except _BadRequest as exc:
                    body = msgspec.json.encode({"retCode": 10001, "retMsg": str(exc)})
                    await stream.send_all(_http_response(HttpResponse(exc.status, body), keep_alive=False))
                    return
            if incoming is None:
                return  # the client closed, or sent nothing useful for too long
            request, buffer = incoming
            session_factory = self._ws_routes.get(request.path)
            if session_factory is not None:
                await self._serve_websocket(stream, request.head + buffer, session_factory)
                return
            handler = self.rest_routes.get(request.path)
            response = NOT_FOUND if handler is None else await handler(request.http)
            connection = request.http.headers.get("connection", "").lower()
            keep_alive = request.version == "HTTP/1.1" and connection != "close"
            await stream.send_all(_http_response(response, keep_alive=keep_alive))
            if not keep_alive:
                return

    async def _read_request(self, stream: trio.abc.Stream, buffer: bytes) -> tuple[_Incoming, bytes] | None:
        """The next request and the bytes after it; a WebSocket path's body is left to the protocol."""
        read = await _read_head(stream, buffer)
        if read is None:
            return None
        head, buffer = read
        method, target, version, headers = _parse_head(head)
        path, _, query = target.partition("?")
        body = b""
        if path not in self._ws_routes:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "bad content-length") from None
            if not 0 <= length <= MAX_BODY_BYTES:
                raise _BadRequest(400, "bad content-length")
            while len(buffer) < length:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    return None
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
        http = HttpRequest(method, path, urllib.parse.parse_qs(query), headers, body)
        return _Incoming(head, version, http), buffer

    async def _serve_websocket(
        self, stream: trio.abc.Stream, raw: bytes, session_factory: Callable[[_WsConnection], Session]
    ) -> None:
        proto = ServerProtocol(max_size=MAX_CLIENT_MESSAGE, logger=_protocol_log)
        proto.receive_data(raw)
        events = proto.events_received()
        if not events or not isinstance(events[0], Request):
            out = b"".join(proto.data_to_send())
            if out:
                await stream.send_all(out)
            return
        response = proto.accept(events[0])
        proto.send_response(response)
        handshake = proto.data_to_send()
        await stream.send_all(b"".join(handshake))
        if response.status_code != 101 or b"" in handshake:
            return  # refused, or failed already (a bad frame came right behind the request)
        self._numbers += 1
        self.connections_total += 1
        conn = _WsConnection(self, stream, proto, self._numbers)
        conn.session = session_factory(conn)
        self._connections.add(conn)
        try:
            await conn.run(events[1:])
        finally:
            self._connections.discard(conn)
            conn.close()

    def _bybit_session_factory(self, category: str) -> Callable[[_WsConnection], Session]:
        def open_session(conn: _WsConnection) -> Session:
            conn_id = bybit.conn_id_for(self.config.seed, conn.number)
            return bybit.BybitSession(category, conn_id, conn, self._rules)

        return open_session

    # -- feeds ---------------------------------------------------------------------------------------

    def _trades_per_frame(self, category: str) -> tuple[int, int]:
        if category == bybit.SPOT:
            return self.config.spot_trades_per_frame
        return self.config.linear_trades_per_frame

    def _trade_feed(
        self, category: str, symbol: str, encoder: Callable[[], Callable[[list[TradeRow], int], bytes]]
    ) -> TradeFeed:
        key = (category, symbol)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = TradeFeed(
                self.market,
                self.market.tape(category, symbol),
                _framed(encoder()),
                rate=self.config.rate,
                trades_per_frame=self._trades_per_frame(category),
                max_frames=self.config.max_frames,
            )
        return feed

    def _start_feed(self, feed: TradeFeed) -> None:
        if not feed.running and not feed.exhausted and self._nursery is not None:
            feed.running = True  # before the task starts, so a second subscriber does not start another
            self._nursery.start_soon(feed.run)

    def _note_sent(self, frames: list[TapeFrame]) -> None:
        self.frames_sent += len(frames)
        record = self.config.record_delivered
        trades = 0
        for frame in frames:
            trades += len(frame.trades)
            if not frame.delivered:
                frame.delivered = True
                if record:
                    self._delivered.append(frame)
        self.trades_sent += trades


class _WsConnection:
    """One client WebSocket: a reader (client frames → session), a writer (queue → socket), a watchdog."""

    def __init__(
        self, server: SimServer, stream: trio.abc.Stream, proto: ServerProtocol, number: int
    ) -> None:
        self.server = server
        self.number = number
        self.session: Session
        self.malformed = MalformedSchedule(server.config.faults.malformed_every)
        self._stream = stream
        self._proto = proto
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._outbox: list[TapeFrame | bytes] = []
        self._backlog = 0  # data frames in the outbox
        self._work = trio.Event()
        self._flush = False  # the protocol has bytes of its own to send (pong, close)
        self._drained = trio.Event()
        self._closed = False
        self._feeds: dict[tuple[str, str], TradeFeed] = {}
        self._fragments: list[bytes] = []
        self._last_activity = trio.current_time()

    async def run(self, pipelined: Iterable[object]) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._on_frames(pipelined)
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._idle_watchdog)

    def abort(self) -> bool:
        """End the connection now, without a close frame; False if it was already ending."""
        if self._closed or self._scope.cancel_called:
            return False
        self._scope.cancel()
        return True

    def close(self) -> None:
        """Detach from every feed and wake anyone waiting on this connection's queue."""
        self._closed = True
        for feed in self._feeds.values():
            feed.subscribers.discard(self)
        self._feeds.clear()
        self._outbox.clear()
        self._drained.set()

    # -- FrameSink -----------------------------------------------------------------------------------

    def push_frames(self, frames: list[TapeFrame]) -> None:
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

    # -- BybitHost -----------------------------------------------------------------------------------

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

    def subscribe_trades(
        self, category: str, symbol: str, encoder: Callable[[], Callable[[list[TradeRow], int], bytes]]
    ) -> None:
        feed = self.server._trade_feed(category, symbol, encoder)
        self._feeds[(category, symbol)] = feed
        feed.subscribers.add(self)
        self.server._start_feed(feed)

    def unsubscribe_trades(self, category: str, symbol: str) -> None:
        feed = self._feeds.pop((category, symbol), None)
        if feed is not None:
            feed.subscribers.discard(self)
        # Frames already queued for that topic are dropped, as if the unsubscribe raced nothing.
        self._outbox = [
            i
            for i in self._outbox
            if not isinstance(i, TapeFrame) or i.symbol != symbol or i.category != category
        ]
        self._backlog = sum(1 for i in self._outbox if type(i) is TapeFrame)

    def subscribe_book(self, category: str, symbol: str, depth: int) -> None:
        """Order books arrive in a later round; the subscription is acknowledged and silent."""

    def unsubscribe_book(self, category: str, symbol: str, depth: int) -> None:
        """See `subscribe_book`."""

    def note_ping(self) -> None:
        self.server.pings += 1
        self._last_activity = trio.current_time()

    def note_subscribes(self, accepted: int, rejected: int) -> None:
        self.server.subscribes += accepted
        self.server.rejected_subscribes += rejected

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
                self.server.pings += 1  # the protocol queued the pong already
                self._last_activity = trio.current_time()
                self._wake_writer()
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
        gate = self.server._stall
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
            if proto.state is OPEN:
                for item in items:
                    if isinstance(item, TapeFrame):
                        chunks.append(item.wire)
                        sent.append(item)
                        if malformed.armed:
                            due = malformed.after_data_frame()
                            if due:
                                self._send_malformed(item, due)
                                chunks += proto.data_to_send()
                    else:
                        proto.send_text(item)
                        chunks += proto.data_to_send()
            if chunks:
                await stream.send_all(b"".join(chunks))
                self._last_activity = trio.current_time()
                if sent:
                    self.server._note_sent(sent)
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
        self.server.malformed_sent += count

    async def _idle_watchdog(self) -> None:
        idle = self.server.config.idle_timeout_s
        while True:
            deadline = self._last_activity + idle
            if trio.current_time() >= deadline:
                break
            await trio.sleep_until(deadline)
        log.info("simulator: closing connection %d: idle for %.0f s", self.number, idle)
        if self._proto.state is OPEN:
            self._proto.send_close(CloseCode.NORMAL_CLOSURE, "idle timeout")
            self._wake_writer()
        await trio.sleep(CLOSE_GRACE_S)
        self._scope.cancel()


__all__ = [
    "NOT_FOUND",
    "HttpRequest",
    "HttpResponse",
    "RestHandler",
    "SimConfig",
    "SimServer",
    "SimStatistics",
    "ws_text_frame",
]
