"""Hypercorn's trio worker with a cap on open connections, and the process's open-files limit.

Hypercorn accepts every connection it can (`trio.serve_listeners`): enough idle or slow clients use up the
process's file descriptors, after which `accept` fails with EMFILE every 0.1 s — each failure logged with a
traceback — and no one is served, `/ping` included. :func:`serve` runs the same pieces (lifespan, one
`TCPServer` per connection, graceful shutdown by deadline) but accepts only while fewer than `limit`
connections are open: beyond that, new connections wait in the kernel's listen backlog until one closes.
Accept failures that signal exhaustion are retried like trio does, and logged once a minute with a count.

Slow clients are bounded by Hypercorn's own timers, which :class:`~marketflow.api.server.HttpServer` sets:
`read_timeout` (no byte from the client for that long, e.g. headers sent and the body never) and
`keep_alive_timeout` (idle between requests, and until a request's headers are complete); and by
:class:`BodyDeadline`, which gives the whole body the same time, so a body sent a byte at a time cannot
hold a connection open either.
"""

from __future__ import annotations

import errno
import logging
import resource
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import attrs
import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    ConnectionState,
    LifespanState,
    Scope,
)
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

__all__ = [
    "ACCEPT_RETRY_S",
    "BodyDeadline",
    "ConnectionLimit",
    "ConnectionStatistics",
    "open_files_limit",
    "raise_open_files_limit",
    "serve",
]

log = logging.getLogger("marketflow.http")

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""`accept` failures that mean "out of descriptors or memory": retried, not fatal (as trio does)."""
ACCEPT_RETRY_S: Final = 0.1
ACCEPT_LOG_INTERVAL_S: Final = 60.0
"""At most one log line per this many seconds about failing accepts; it counts the ones not logged."""


@attrs.frozen
class ConnectionStatistics:
    limit: int
    open: int
    accepted: int
    at_limit: bool
    """Whether accepting waits for a connection to close."""
    accept_errors: int


class ConnectionLimit:
    """At most `limit` open connections; the accept loop of :func:`serve` waits for a free one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = trio.Semaphore(limit, max_value=limit)
        self._accepted = 0
        self._open = 0
        self._errors = 0
        self._at_limit = False
        self._logged_at: float | None = None
        self._unlogged = 0

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            self.limit,
            self._open,
            self._accepted,
            self._at_limit,
            self._errors,
        )

    async def accept_loop(
        self,
        listener: trio.SocketListener,
        handler: Callable[[trio.SocketStream], Awaitable[object]],
        nursery: trio.Nursery,
    ) -> None:
        """Accept connections into `nursery` while a slot is free; each frees its slot when it closes."""
        async with listener:
            while True:
                self._at_limit = self._free.value == 0
                await self._free.acquire()
                self._at_limit = False
                try:
                    stream = await self._accept(listener)
                except BaseException:
                    self._free.release()
                    raise
                self._accepted += 1
                nursery.start_soon(self._handle, stream, handler)

    async def _accept(self, listener: trio.SocketListener) -> trio.SocketStream:
        while True:
            try:
                return await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._accept_failed(exc)
            await trio.sleep(ACCEPT_RETRY_S)

    def _accept_failed(self, exc: OSError) -> None:
        self._errors += 1
        now = trio.current_time()
        if self._logged_at is not None and now - self._logged_at < ACCEPT_LOG_INTERVAL_S:
            self._unlogged += 1
            return
        log.warning(
            "accepting HTTP connections fails; retrying every 0.1 s",
            extra={
                "error": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                "reason": exc.strerror,
                "open_connections": self._open,
                "open_files_limit": open_files_limit()[0],
                "failures_not_logged": self._unlogged,
            },
        )
        self._logged_at = now
        self._unlogged = 0

    async def _handle(
        self, stream: trio.SocketStream, handler: Callable[[trio.SocketStream], Awaitable[object]]
    ) -> None:
        self._open += 1
        try:
            await handler(stream)
        finally:
            await trio.aclose_forcefully(stream)
            self._open -= 1
            self._free.release()


class BodyDeadline:
    """ASGI middleware: an HTTP request's body must be complete within `timeout_s` of its headers.

    After that the app hears `http.disconnect` (as if the client had gone) and, unless it has begun an
    answer already, the client gets a 408 in the API's error shape (whatever the app sends later is
    dropped); the server then closes the connection, whose request was never finished.
    """

    def __init__(self, app: ASGIFramework, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = trio.current_time() + self.timeout_s
        complete = answered = replaced = False

        async def bounded() -> ASGIReceiveEvent:
            nonlocal complete, answered, replaced
            if complete:  # after the body: waiting for a disconnect is the app's business
                return await receive()
            with trio.move_on_at(deadline):
                message = await receive()
                complete = message["type"] != "http.request" or not message.get("more_body", False)
                return message
            complete = True
            if not answered:
                answered = replaced = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                        "trailers": False,
                    }
                )
                detail = f"the request body did not arrive within {self.timeout_s:g} s (http.read_timeout_s)"
                body = msgspec.json.encode({"error": "request_timeout", "detail": detail})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            return {"type": "http.disconnect"}

        async def guarded(message: ASGISendEvent) -> None:
            nonlocal answered
            if replaced:
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, bounded, guarded)


async def serve(
    app: ASGIFramework,
    config: HypercornConfig,
    limit: ConnectionLimit,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `config.bind` (plain HTTP) like `hypercorn.trio.serve`, at most `limit` connections.

    Reports the bound URLs once listening. After `shutdown_trigger` returns: no new connections, idle ones
    close, requests in flight get `config.graceful_timeout` seconds, then the app's lifespan shuts down.
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets().insecure_sockets
            listeners = []
            for sock in sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            task_status.started([f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets])
            handler = partial(TCPServer, wrapped, config, context, ConnectionState(state.copy()))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(limit.accept_loop, listener, handler, server_nursery)
            except* ShutdownError:
                pass
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def open_files_limit() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of the process; `resource.RLIM_INFINITY` reads as a large number."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = sys.maxsize
    return (
        infinite if soft == resource.RLIM_INFINITY else soft,
        infinite if hard == resource.RLIM_INFINITY else hard,
    )


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one (often 1024 → 524288): every connection, SQLite
    read and feed holds a descriptor. Called once at start; logs what it did."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning(
            "could not raise the open-files limit", extra={"soft": soft, "hard": hard, "reason": str(exc)}
        )
        return
    log.info("open-files limit raised", extra={"from": soft, "to": hard})
