"""The HTTP server actor: the Quart-Trio app served by Hypercorn's trio worker on `http.listen`.

`run()` reports started once the socket listens (port 0 picks a free port: see `.port` and `.url`).
`request_stop()` starts a graceful shutdown: no new connections, requests in flight get up to
`graceful_timeout_s` to finish. Cancelling `run()` closes everything at once. While it runs it samples the
feeds' message counters every second, for the msgs/s of `/collectors/status`.

Limits (`[http]`): at most `max_connections` open connections (fewer if the open-files limit is tight;
see `marketflow/api/connections.py`), a client silent for `read_timeout_s` mid-request is disconnected, an
idle keep-alive connection closes after `idle_timeout_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIFramework
from quart_trio import QuartTrio

from marketflow.api.app import create_app
from marketflow.api.connections import (
    BodyDeadline,
    ConnectionLimit,
    ConnectionStatistics,
    open_files_limit,
    serve,
)
from marketflow.api.queries import QueryContext
from marketflow.config import Config, HttpConfig

__all__ = ["HttpServer", "HttpStatistics"]

log = logging.getLogger("marketflow.http")

RATE_SAMPLE_S = 1.0
RESERVED_FILES = 128
"""Descriptors kept free of HTTP connections: feeds, SQLite reads, the spool, logs, the capture."""


@attrs.frozen
class HttpStatistics:
    name: str
    state: str
    listen: str
    url: str | None
    connections: ConnectionStatistics


class HttpServer:
    """Serves `ctx` over HTTP; an actor (`name="http"`)."""

    def __init__(
        self,
        ctx: QueryContext,
        config: Config | HttpConfig,
        *,
        app: QuartTrio | None = None,
        name: str = "http",
        graceful_timeout_s: float | None = None,
        asgi_factory: Callable[[QueryContext, Config | HttpConfig, QuartTrio], ASGIFramework] | None = None,
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.http = config.http if isinstance(config, Config) else config
        if graceful_timeout_s is None:
            shutdown = config.daemon.shutdown_timeout_s if isinstance(config, Config) else 10.0
            graceful_timeout_s = min(5.0, shutdown / 2)
        self.graceful_timeout_s = graceful_timeout_s
        self.app = app if app is not None else create_app(ctx)
        # MCP hook (issue 6): `asgi_factory` (marketflow.api.mcp.build_asgi) wraps the Quart app to serve
        # /mcp beside it; hypercorn serves whatever ASGI app results.
        self.asgi: ASGIFramework = self.app if asgi_factory is None else asgi_factory(ctx, config, self.app)
        self.url: str | None = None
        self.port: int | None = None
        self._stop = trio.Event()
        self._state = "idle"
        self.connections = ConnectionLimit(_connection_limit(self.http.max_connections))

    def request_stop(self) -> None:
        """Stop accepting connections and finish the requests in flight."""
        if self._state == "running":
            self._state = "stopping"
        self._stop.set()

    def statistics(self) -> HttpStatistics:
        return HttpStatistics(
            self.name, self._state, self.http.listen, self.url, self.connections.statistics()
        )

    def _hypercorn_config(self) -> HypercornConfig:
        config = HypercornConfig()
        config.bind = [self.http.listen]
        config.graceful_timeout = self.graceful_timeout_s
        config.accesslog = None
        config.errorlog = logging.getLogger("marketflow.http.server")
        # The app limits bodies itself (413 in our JSON shape); these bound slow and idle clients.
        config.keep_alive_timeout = self.http.idle_timeout_s
        # No byte from the client for this long, mid-request or while its answer is computed: closed.
        # (Hypercorn types it int; it only goes to trio.fail_after.)
        config.read_timeout = self.http.read_timeout_s  # type: ignore[assignment]
        return config

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or, after `request_stop()`, until the graceful shutdown is done."""
        if self._state != "idle":  # its stop event stays set: a second run would return at once
            raise RuntimeError(f"HTTP server {self.name!r} serves once; a restart builds a new one")
        self._state = "starting"
        try:
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(self._serve)
                self.url = binds[0] if binds else None
                self.port = _port(self.url)
                nursery.start_soon(self._sample_rates)
                self._state = "running"
                log.info("HTTP API listening", extra={"url": self.url})
                task_status.started()
        finally:
            self._state = "stopped"

    async def _serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(
                BodyDeadline(self.asgi, self.http.read_timeout_s),
                self._hypercorn_config(),
                self.connections,
                shutdown_trigger=self._stop.wait,
                task_status=task_status,
            )
        finally:
            # Once Hypercorn returns the sampler has nothing to report for.
            self._stop.set()

    async def _sample_rates(self) -> None:
        while not self._stop.is_set():
            self.ctx.sample_rates()
            with trio.move_on_after(RATE_SAMPLE_S):
                await self._stop.wait()


def _connection_limit(configured: int) -> int:
    """`http.max_connections`, lowered to leave :data:`RESERVED_FILES` of the open-files limit free."""
    soft = open_files_limit()[0]
    limit = max(1, min(configured, soft - RESERVED_FILES))
    if limit < configured:
        log.warning(
            "HTTP connections capped below http.max_connections by the open-files limit",
            extra={"max_connections": configured, "cap": limit, "open_files_limit": soft},
        )
    return limit


def _port(url: str | None) -> int | None:
    if not url:
        return None
    tail: Any = url.rpartition(":")[2].split("/", 1)[0]
    return int(tail) if str(tail).isdigit() else None
