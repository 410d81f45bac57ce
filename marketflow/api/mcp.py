"""MCP (SPEC §7) at `/mcp`: the official SDK's Streamable HTTP transport, mounted beside the Quart app.

:func:`build_asgi` is the ASGI app the HTTP server serves: `/mcp` (and `/mcp/`) go to the MCP SDK's
session manager, everything else to the Quart app. The SDK speaks both protocol eras on one endpoint,
chosen per request by the `MCP-Protocol-Version` header: the stateless 2026-07-28 revision
(`server/discover`, `_meta` on every request, `Mcp-Method`/`Mcp-Name` headers) and the 2025-11-25
handshake (`initialize`, `Mcp-Session-Id`, `DELETE`, 404 for an unknown session).

This module imports nothing of the SDK: the SDK and what it drags in (pydantic, starlette, httpx, ...) cost
about 35 MB of RSS that a daemon queried only over HTTP should not carry. :mod:`~marketflow.api.mcp_sdk`
holds everything SDK-bound; the first request that gets past the checks below and is not a GET imports it
in a worker thread (the event loop keeps running meanwhile; concurrent first requests wait for the one
load; a failed load is a 503 naming the cause and is tried again by the next request) and starts the SDK's
session manager in a nursery of the ASGI lifespan, so it still stops with the server: lifespan shutdown
completes only after the MCP sessions are closed.

In front of the SDK: on a loopback listener a `Host` that is not a loopback name (or one of
`http.allowed_hosts`) gets a 421, a present `Origin` whose host is not this server's a 403, and the API-key
rules of HTTP reads apply (:class:`~marketflow.api.auth.AuthPolicy`), checked on every HTTP request.
`GET /mcp` is a 405: the server never sends unsolicited messages, and an idle stream held open would only
delay a graceful shutdown to its deadline. Each client (API key, else peer address) may hold a bounded
number of 2025-11-25 sessions, which expire unused (:mod:`~marketflow.api.mcp_sessions`).

The tools and resources live in :mod:`~marketflow.api.mcp_tools` (their argument types in
:mod:`~marketflow.api.mcp_args`), re-exported here. Bad arguments come back as a tool error (`isError`)
naming the argument; an unknown tool is a JSON-RPC error (-32602), as the spec asks.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import attrs
import msgspec
import trio
from hypercorn.typing import ASGIFramework
from quart_trio import QuartTrio

from marketflow.api.auth import AuthError, AuthPolicy, is_loopback, misdirected
from marketflow.api.keys import Scope as KeyScope
from marketflow.api.mcp_args import (
    Asset,
    Bin,
    BookArgs,
    CandlesArgs,
    Exchange,
    GapsArgs,
    Interval,
    Limit,
    Market,
    Markets,
    NoArgs,
    OrderFlowArgs,
    ProfileArgs,
    Quotes,
    StatusArgs,
    Symbol,
    SystemInfoOut,
    Time,
    TradesArgs,
)
from marketflow.api.mcp_sessions import SessionLedgerStatistics, SessionLimits
from marketflow.api.mcp_tools import (
    INSTRUCTIONS,
    RESOURCES,
    TOOLS,
    ToolSpec,
    input_schema,
    object_schema,
    tool,
)
from marketflow.api.queries import QueryContext
from marketflow.config import Config, HttpConfig

if TYPE_CHECKING:
    from marketflow.api.mcp_sdk import McpTransport

__all__ = [
    "INSTRUCTIONS",
    "MCP_PATHS",
    "RESOURCES",
    "TOOLS",
    "Asset",
    "Bin",
    "BookArgs",
    "CandlesArgs",
    "Exchange",
    "GapsArgs",
    "Interval",
    "Limit",
    "Market",
    "Markets",
    "McpAsgi",
    "McpStatistics",
    "NoArgs",
    "OrderFlowArgs",
    "ProfileArgs",
    "Quotes",
    "StatusArgs",
    "Symbol",
    "SystemInfoOut",
    "Time",
    "ToolSpec",
    "TradesArgs",
    "build_asgi",
    "drain",
    "input_schema",
    "json_response",
    "object_schema",
    "origin_allowed",
    "tool",
]

log = logging.getLogger("marketflow.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MCP_PATHS = frozenset({"/mcp", "/mcp/"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

# -- the ASGI composition ---------------------------------------------------------------------------------


def _hostname(authority: str) -> str | None:
    """The lower-case host of `authority` (`host[:port]`, IPv6 in brackets), or None if it is malformed."""
    try:
        parts = urlsplit("//" + authority)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    return parts.hostname or None


def origin_allowed(origin: str, listen_host: str, host_header: str | None) -> bool:
    """Whether a request's `Origin` is this server's own.

    Its host must equal, exactly, one of this server's names: the listen address; loopback names when it
    listens on loopback or on every interface; or, on every interface, the request's `Host` when that is
    an IP address (a DNS name there could be a rebinding attacker's, who controls both headers).
    """
    try:
        parts = urlsplit(origin.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return False
    listen = listen_host.strip().lower().removeprefix("[").removesuffix("]")
    if listen in WILDCARD_HOSTS:
        if host in LOOPBACK_NAMES:
            return True
        request_host = _hostname(host_header or "")
        return request_host is not None and host == request_host and _is_ip(request_host)
    if is_loopback(listen):
        return host in LOOPBACK_NAMES or host == listen
    return host == listen


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ScopeHeaders(Mapping[str, str]):
    """The request headers of an ASGI `scope`, by case-insensitive name (the first of repeated ones)."""

    def __init__(self, scope: Scope) -> None:
        self._values: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            self._values.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


async def json_response(
    send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Send a whole JSON response."""
    data = msgspec.json.encode(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def drain(receive: Receive) -> None:
    """Read the request body to its end, so the connection can serve the next request."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class McpUnavailable(Exception):
    """The MCP SDK side cannot serve: it failed to load or start, or the server is shutting down."""


def _load_transport(ctx: QueryContext) -> McpTransport:
    """Import the MCP SDK and build the server of `ctx`: the ~0.5 s, ~35 MB part, run in a worker thread."""
    from marketflow.api.mcp_sdk import McpTransport

    return McpTransport(ctx)


@attrs.define(eq=False)
class _Lifetime:
    """One ASGI lifespan: the nursery the SDK's session manager runs in once needed, and its stop signal."""

    nursery: trio.Nursery
    stop: trio.Event = attrs.Factory(trio.Event)
    serving: bool = False


@attrs.frozen
class McpStatistics:
    """What :meth:`McpAsgi.statistics` reports about the lazily loaded SDK side."""

    sdk_loaded: bool
    """Whether the MCP SDK is imported and the server built (on the first request that reaches it)."""
    sdk_loads: int
    """Load attempts, failed ones included."""
    serving: bool
    """Whether a session manager runs (from the first SDK request of a lifespan to its shutdown)."""


class McpAsgi:
    """`/mcp` to the MCP SDK (behind Origin and API-key checks), everything else to the Quart app.

    The SDK is imported on the first request that passes the checks and is not a GET, in a worker thread
    so that the event loop keeps running meanwhile; its session manager then runs in a nursery of the ASGI
    lifespan until the server shuts down.
    """

    def __init__(
        self,
        ctx: QueryContext,
        http: HttpConfig,
        quart_app: QuartTrio,
        limits: SessionLimits | None = None,
    ) -> None:
        self.ctx = ctx
        self.limits = SessionLimits() if limits is None else limits
        self.quart_app = quart_app
        self.quart = cast(ASGIApp, quart_app)
        self.listen_host = http.host
        self._transport: McpTransport | None = None
        self._lifetime: _Lifetime | None = None
        self._loading = trio.Lock()
        self._loads = 0

    @property
    def policy(self) -> AuthPolicy:
        policy: AuthPolicy = self.quart_app.config["MARKETFLOW_AUTH"]
        return policy

    def statistics(self) -> McpStatistics:
        lifetime = self._lifetime
        serving = lifetime is not None and lifetime.serving and not lifetime.stop.is_set()
        return McpStatistics(self._transport is not None, self._loads, serving)

    def session_statistics(self) -> SessionLedgerStatistics | None:
        """The 2025-11-25 sessions held per client, while a session manager runs."""
        transport = self._transport
        return None if transport is None or transport.ledger is None else transport.ledger.statistics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path: str = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] == "http" and (path in MCP_PATHS or path.startswith("/mcp/")):
            await self._mcp(scope, receive, send, path)
            return
        await self.quart(scope, receive, send)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        headers = ScopeHeaders(scope)
        host = headers.get("host")
        if not self.policy.host_allowed(host):
            await drain(receive)
            refused = misdirected(host or "")
            await json_response(send, refused.status, {"error": refused.code, "detail": refused.detail})
            return
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.listen_host, headers.get("host")):
            await drain(receive)
            detail = f"Origin {origin[:100]!r} is not this server's; cross-origin MCP requests are refused"
            await json_response(send, 403, {"error": "forbidden", "detail": detail})
            return
        if path not in MCP_PATHS:  # /mcp/ping, /mcp/info: Quart routes with their own auth
            await self.quart(scope, receive, send)
            return
        client = scope.get("client")
        try:
            key = self.policy.authorize(KeyScope.READ, headers, client[0] if client else None)
        except AuthError as exc:
            await drain(receive)
            extra = [("www-authenticate", 'Bearer realm="marketflow"')] if exc.status == 401 else []
            await json_response(send, exc.status, {"error": exc.code, "detail": exc.detail}, extra)
            return
        if scope["method"] == "GET":
            await drain(receive)
            detail = "this server sends no unsolicited messages, so it offers no GET stream; POST to /mcp"
            await json_response(
                send, 405, {"error": "method_not_allowed", "detail": detail}, [("allow", "POST, DELETE")]
            )
            return
        lifetime = self._lifetime
        if lifetime is None:
            await drain(receive)
            detail = "the MCP session manager is not running (the server got no ASGI lifespan startup)"
            await json_response(send, 503, {"error": "unavailable", "detail": detail})
            return
        try:
            transport = await self._serving_transport(lifetime)
        except McpUnavailable as exc:
            await drain(receive)
            await json_response(send, 503, {"error": "unavailable", "detail": str(exc)})
            return
        await transport.handle(scope, receive, send, key)

    async def _serving_transport(self, lifetime: _Lifetime) -> McpTransport:
        """The SDK transport with its session manager running in `lifetime`: loaded and started if need be.

        Concurrent first requests wait for one load; a failed load is tried again by the next request.
        """
        async with self._loading:
            transport = self._transport
            if transport is None:
                self._loads += 1
                try:
                    # Not cancellable: an abandoned import would finish anyway, then be repeated.
                    transport = await trio.to_thread.run_sync(_load_transport, self.ctx)
                except Exception as exc:
                    log.error("loading the MCP SDK failed: %r", exc, exc_info=exc)
                    raise McpUnavailable(f"the MCP SDK could not be loaded: {exc!r}") from exc
                self._transport = transport
            if not lifetime.serving:
                if lifetime.stop.is_set():
                    raise McpUnavailable("the server is shutting down")
                try:
                    await lifetime.nursery.start(transport.run, lifetime.stop, self.limits)
                except Exception as exc:
                    log.error("starting the MCP session manager failed: %r", exc, exc_info=exc)
                    raise McpUnavailable(f"the MCP session manager could not start: {exc!r}") from exc
                lifetime.serving = True
            return transport

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Quart app's lifespan, in a nursery where the first MCP request starts the session manager.

        A server run that gets no MCP request never loads the SDK; one that does closes the MCP sessions
        before it reports its shutdown complete.
        """
        held: list[Message] = []

        async def send_later(message: Message) -> None:
            # Report shutdown complete only once the MCP sessions are closed too.
            if message["type"] == "lifespan.shutdown.complete":
                held.append(message)
            else:
                await send(message)

        async with trio.open_nursery() as nursery:
            lifetime = self._lifetime = _Lifetime(nursery)
            try:
                await self.quart(scope, receive, send_later)
            finally:
                self._lifetime = None
                lifetime.stop.set()  # the session manager, if started, closes its sessions and returns
        for message in held:
            await send(message)


def build_asgi(ctx: QueryContext, config: Config | HttpConfig, quart_app: QuartTrio) -> ASGIFramework:
    """The ASGI app the HTTP server serves: MCP at `/mcp`, the Quart app everywhere else.

    Pass it to :class:`~marketflow.api.server.HttpServer` as `asgi_factory`.
    """
    http = config.http if isinstance(config, Config) else config
    app: ASGIFramework = McpAsgi(ctx, http, quart_app)  # type: ignore[assignment]
    return app
