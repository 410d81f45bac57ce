"""The MCP SDK side of `/mcp`: the SDK server of :mod:`~marketflow.api.mcp`'s tools and its session manager.

This is the only module of ours that imports the official MCP Python SDK (and with it pydantic, starlette,
httpx and the rest, about 35 MB of RSS). :class:`~marketflow.api.mcp.McpAsgi` imports it in a worker thread
on the first request that reaches the SDK, so a daemon that only ever answers HTTP never loads it.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import mcp_types as types
import msgspec
import trio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from marketflow import __version__
from marketflow.api.app import MAX_BODY_BYTES
from marketflow.api.keys import ApiKey
from marketflow.api.mcp import Message, Receive, Scope, Send, drain, json_response
from marketflow.api.mcp_sessions import SessionLedger, SessionLimits
from marketflow.api.mcp_tools import INSTRUCTIONS, RESOURCES, TOOLS, ToolSpec, input_schema, object_schema
from marketflow.api.queries import QueryContext, QueryError

__all__ = ["McpTransport", "build_server"]

log = logging.getLogger("marketflow.http")

QUOTA_ERROR = -32000
"""JSON-RPC code of "this client holds too many sessions" (the implementation-defined server range)."""

_AT = re.compile(r" - at `\$\.([A-Za-z_]\w*)[^`]*`")
_FIELD = re.compile(r"field `([A-Za-z_]\w*)`")


def _tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def _argument_error(tool: ToolSpec, exc: msgspec.ValidationError) -> types.CallToolResult:
    message = str(exc)
    found = _AT.search(message) or _FIELD.search(message)
    if found is None:
        return _tool_error(f"Invalid arguments for {tool.name}: {message}.")
    return _tool_error(f"Invalid argument {found.group(1)!r}: {_AT.sub('', message)}.")


def _query_error(tool: ToolSpec, exc: QueryError) -> types.CallToolResult:
    if exc.param is None:
        return _tool_error(f"{tool.name} failed ({exc.code}): {exc.detail}")
    param = tool.params.get(exc.param, exc.param)
    return _tool_error(f"Invalid argument {param!r} ({exc.code}): {exc.detail}")


def build_server(ctx: QueryContext) -> Server[Any]:
    """The MCP server of `ctx`: the tools and resources, transport-independent."""
    listed = [
        types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=input_schema(tool.args),
            output_schema=object_schema(tool.output),
            annotations=types.ToolAnnotations(
                title=tool.title, read_only_hint=True, idempotent_hint=True, open_world_hint=False
            ),
        )
        for tool in TOOLS.values()
    ]

    async def list_tools(
        rctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(
        rctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = TOOLS.get(params.name)
        if tool is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"Unknown tool: {params.name[:80]!r} (tools: {', '.join(TOOLS)})",
            )
        try:
            args = msgspec.convert(params.arguments or {}, tool.args, strict=False)
        except msgspec.ValidationError as exc:
            return _argument_error(tool, exc)
        try:
            result = await tool.run(ctx, args)
        except QueryError as exc:
            return _query_error(tool, exc)
        return types.CallToolResult(
            content=[types.TextContent(text=tool.summarize(result, args))], structured_content=result
        )

    async def list_resources(
        rctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(uri=uri, name=name, description=description, mime_type="application/json")
                for uri, (name, description, _) in RESOURCES.items()
            ]
        )

    async def read_resource(
        rctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        entry = RESOURCES.get(params.uri)
        if entry is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"Unknown resource: {params.uri[:80]!r} (resources: {', '.join(RESOURCES)})",
            )
        text = msgspec.json.encode(entry[2](ctx)).decode()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=params.uri, mime_type="application/json", text=text)]
        )

    return Server(
        "marketflow",
        version=__version__,
        title="marketflow",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


class McpTransport:
    """The SDK server of `ctx` behind the SDK's Streamable HTTP session manager (a fresh one per run)."""

    def __init__(self, ctx: QueryContext) -> None:
        self.server = build_server(ctx)
        self.manager: StreamableHTTPSessionManager | None = None
        self.ledger: SessionLedger | None = None

    async def run(
        self,
        stop: trio.Event,
        limits: SessionLimits | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a session manager until `stop` is set, then close its sessions and return."""
        limits = SessionLimits() if limits is None else limits
        manager = StreamableHTTPSessionManager(
            self.server,
            json_response=True,  # the tools answer at once and send no progress: one JSON body each
            stateless=False,  # 2025-11-25 sessions; 2026-07-28 requests are stateless whatever this says
            # Origin is checked exactly in front (the SDK's check matches by string prefix).
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=MAX_BODY_BYTES,
            max_sessions=limits.total,
            session_idle_timeout=limits.idle_s,
        )
        async with manager.run():
            self.manager, self.ledger = manager, SessionLedger(limits)
            try:
                task_status.started()
                await stop.wait()
            finally:
                self.manager = self.ledger = None

    async def handle(self, scope: Scope, receive: Receive, send: Send, key: ApiKey | None) -> None:
        """Serve one `/mcp` request (already past the Origin and API-key checks) while :meth:`run` runs."""
        manager, ledger = self.manager, self.ledger
        if manager is None or ledger is None:
            raise RuntimeError("the MCP session manager is not running")
        if scope["method"] == "POST":
            # The body is read here, whole, before the SDK sees the request: a client gone in the middle
            # of it is one warning line, not the SDK's ERROR traceback (and its 500 to nobody).
            replay = await _ReadBody.of(receive)
            if replay.disconnected:
                log.warning(
                    "MCP client disconnected in the middle of its request body",
                    extra={"client": _client(scope, key), "received_bytes": replay.size},
                )
                return
            receive = replay.receive
        if key is not None:
            # The SDK binds a 2025-11-25 session to the credential that opened it: another key gets a 404.
            token = AccessToken(token=key.prefix, client_id=f"api-key:{key.prefix}", scopes=list(key.scopes))
            scope = {**scope, "user": AuthenticatedUser(token)}
        version = _header(scope, b"mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            await manager.handle_request(scope, receive, send)  # 2026-07-28: stateless, no session
            return
        session_id = _header(scope, b"mcp-session-id")
        client = _client(scope, key)
        if session_id is None:
            await self._open(manager, ledger, client, scope, receive, send)
            return
        ledger.begin(session_id, trio.current_time())
        answer = _Answer(send)
        try:
            await manager.handle_request(scope, receive, answer.send)
        finally:
            ended = scope["method"] == "DELETE" and answer.status is not None and answer.status < 300
            # A 404 to another key says nothing about the session: the SDK hides it from non-owners.
            unknown = answer.status == 404 and ledger.owner(session_id) == client
            ledger.end(session_id, trio.current_time(), gone=ended or unknown)

    async def _open(
        self,
        manager: StreamableHTTPSessionManager,
        ledger: SessionLedger,
        client: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """A request without a session id: it opens one if it succeeds, so it counts against `client`."""
        wait = ledger.try_open(client, trio.current_time())
        if wait is not None:
            await drain(receive)
            log.warning("MCP session quota reached", extra={"client": client})
            held, retry = ledger.held(client), math.ceil(wait)
            message = (
                f"too many open MCP sessions for this client ({held} of {ledger.limits.per_client}): end "
                f"one (DELETE /mcp with its Mcp-Session-Id) or retry in {retry} s, when an unused one expires"
            )
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": QUOTA_ERROR, "message": message}}
            await json_response(send, 429, body, [("retry-after", str(retry))])
            return
        answer = _Answer(send)
        try:
            await manager.handle_request(scope, receive, answer.send)
        finally:
            opened = answer.session_id if answer.status is not None and answer.status < 400 else None
            ledger.opened(client, opened, trio.current_time())


def _client(scope: Scope, key: ApiKey | None) -> str:
    """Whom a session counts against: the API key that opened it, else the peer address."""
    if key is not None:
        return f"key {key.prefix}"
    peer = scope.get("client")
    return f"peer {peer[0]}" if peer else "peer unknown"


def _header(scope: Scope, name: bytes) -> str | None:
    """The first request header `name` (lower-case), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class _ReadBody:
    """A request body read to its end (or to the client's disconnect), handed on as one ASGI message."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self._pending: list[Message] = []
        self.size = 0
        self.disconnected = False

    @classmethod
    async def of(cls, receive: Receive) -> _ReadBody:
        """Read `receive` until the body ends; past `MAX_BODY_BYTES` the rest is left for the SDK (which
        answers 413)."""
        body = cls(receive)
        while body.size <= MAX_BODY_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.disconnected = True
                return body
            chunk = bytes(message.get("body", b""))
            body._chunks.append(chunk)
            body.size += len(chunk)
            if not message.get("more_body", False):
                body._pending = [{"type": "http.request", "body": b"".join(body._chunks), "more_body": False}]
                body._chunks = []
                return body
        body._pending = [{"type": "http.request", "body": b"".join(body._chunks), "more_body": True}]
        body._chunks = []
        return body

    async def receive(self) -> Message:
        """What was read, then the rest of the request (its disconnect) from the server."""
        if self._pending:
            return self._pending.pop()
        return await self._receive()


class _Answer:
    """Passes a response through, noting its status and the session id it hands out."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.session_id: str | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            for key, value in message.get("headers", ()):
                if bytes(key).lower() == b"mcp-session-id":
                    self.session_id = bytes(value).decode("latin-1")
        await self._send(message)
