"""`GET /mcp/ping` and `GET /mcp/info`: the MCP `ping` and `system_info` tools over plain HTTP (SPEC §6).

They answer exactly what the tools' `structuredContent` holds, for monitors and scripts that speak HTTP
but not MCP. `/mcp/ping` is open to everyone, as `/ping` is; `/mcp/info` is a read.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import document_response, security_scheme
from quart_trio import QuartTrio

from marketflow.api import queries
from marketflow.api.app import SECURITY, ErrorBody
from marketflow.api.auth import require_scope
from marketflow.api.keys import Scope
from marketflow.api.mcp_args import SystemInfoOut
from marketflow.api.queries import QueryContext
from marketflow.api.routes import PongOut

__all__ = ["register_mcp_routes"]


def register_mcp_routes(app: QuartTrio, ctx: QueryContext) -> None:
    """Add `/mcp/ping` and `/mcp/info` to `app` (before it serves)."""
    blueprint = Blueprint("mcp_http", __name__)

    @blueprint.get("/mcp/ping")
    @document_response(PongOut, 200)
    async def mcp_ping() -> dict[str, Any]:
        """The MCP `ping` tool over HTTP: answers while the server runs."""
        return {"pong": True}

    @blueprint.get("/mcp/info")
    @security_scheme(SECURITY)
    @require_scope(Scope.READ)
    @document_response(ErrorBody, 401)
    @document_response(ErrorBody, 403)
    @document_response(SystemInfoOut, 200)
    async def mcp_info() -> dict[str, Any]:
        """The MCP `system_info` tool over HTTP: version, uptime, health, storage, feeds, analytics."""
        return queries.system_info(ctx)

    app.register_blueprint(blueprint)
