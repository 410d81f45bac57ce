"""Every route the daemon serves, from its own route map, against its declared scope and every credential.

`SCOPES` is the contract: each (method, route) of the daemon's Quart app and of the MCP endpoint, and the
scope it needs (None: open to everyone). The test fails when the app serves a route the table does not
name (declare the new route's scope here), when a route's declared scope differs from the table (lowering
`POST /auth/api-keys` to write scope fails), and when any request gets an answer its scope does not allow:
no key, a wrong, expired or revoked key are 401s; a key below the route's scope a 403; a key at or above
it passes auth. The server listens on 0.0.0.0, so reads are not open to a local client.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from marketflow.api.auth import route_scope
from marketflow.api.keys import Scope
from marketflow.api.mcp import MCP_PATHS
from marketflow.model import now_us
from tests.api.test_mcp import JSON_HEADERS, initialize, running_mcp

READ, WRITE, ADMIN = Scope.READ, Scope.WRITE, Scope.ADMIN

SCOPES: dict[tuple[str, str], Scope | None] = {
    ("GET", "/"): None,
    ("GET", "/ping"): None,
    ("GET", "/health"): None,
    ("GET", "/openapi.json"): None,
    ("GET", "/dashboard"): None,
    ("GET", "/dashboard/<name>"): None,
    ("GET", "/static/<path:filename>"): None,  # Quart's own; there are no static files
    ("GET", "/mcp/ping"): None,
    ("GET", "/mcp/info"): READ,
    ("GET", "/collectors/status"): READ,
    ("GET", "/collectors/status/<name>"): READ,
    ("GET", "/collectors/storage/stats"): READ,
    ("GET", "/collectors/trades"): READ,
    ("GET", "/markets"): READ,
    ("GET", "/book/<exchange>/<symbol>"): READ,
    ("GET", "/candles"): READ,
    ("GET", "/volume-profile"): READ,
    ("GET", "/order-flow"): READ,
    ("GET", "/gaps"): READ,
    ("GET", "/ticker/<exchange>/<symbol>"): READ,
    ("GET", "/derivatives"): READ,
    ("GET", "/liquidations"): READ,
    ("GET", "/metrics"): READ,
    ("GET", "/collectors/symbols"): READ,
    ("POST", "/collectors/symbols"): WRITE,
    ("DELETE", "/collectors/symbols/<symbol>"): WRITE,
    ("GET", "/auth/api-keys"): ADMIN,
    ("POST", "/auth/api-keys"): ADMIN,
    ("DELETE", "/auth/api-keys/<prefix>"): ADMIN,
    ("GET", "/debug/tasks"): ADMIN,
}
"""Every route of the daemon's Quart app and the scope it needs."""

MCP_SCOPES: dict[tuple[str, str], Scope | None] = {
    (method, path): READ for method in ("POST", "DELETE", "GET") for path in sorted(MCP_PATHS)
}
"""The MCP endpoint (served beside the Quart app, not in its route map): the rules of reads."""

PATH_VALUES = {
    "name": "storage",
    "exchange": "bybit",
    "symbol": "BTC-USDT",
    "prefix": "mf_nosuchkey",
    "path:filename": "style.css",
}
QUERY = {"exchange": "bybit", "symbol": "BTC-USDT", "market": "spot"}
CREDENTIALS = ("none", "wrong", "expired", "revoked", "read", "write", "admin")


def concrete(rule: str) -> str:
    """A URL path for a route rule: each `<param>` filled with a plausible value."""
    path = rule
    for name, value in PATH_VALUES.items():
        path = path.replace(f"<{name}>", value)
    return path.replace("/dashboard/<name>", "/dashboard/app.js")


def expected_denial(scope: Scope | None, credential: str) -> int | None:
    """The status a credential must get on a route needing `scope` (None: auth lets it through)."""
    if scope is None:
        return None
    if credential in ("none", "wrong", "expired", "revoked"):
        return 401
    return 403 if Scope[credential.upper()] < scope else None


async def test_every_route_answers_every_credential_as_its_scope_says(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with running_mcp(tmp_path, listen="0.0.0.0:0") as api:
            # The daemon's own HTTP server and app: exactly the routes a deployment serves.
            app = api.daemon.http.app
            served: dict[tuple[str, str], Scope | None] = {}
            for rule in app.url_map.iter_rules():
                for method in sorted(rule.methods or ()):
                    if method not in ("HEAD", "OPTIONS"):
                        served[(method, rule.rule)] = route_scope(app.view_functions[rule.endpoint])
            unnamed = sorted(set(served) - set(SCOPES))
            assert not unnamed, f"routes without a declared scope in SCOPES: {unnamed}"
            assert sorted(set(SCOPES) - set(served)) == [], "SCOPES names routes the app does not serve"
            wrong = {
                route: (served[route], scope) for route, scope in SCOPES.items() if served[route] != scope
            }
            assert not wrong, f"declared scope differs from the contract (declared, contract): {wrong}"

            store = api.keys
            keys = {name: store.create(name, [name])[0] for name in ("read", "write", "admin")}
            past = now_us() - 30 * 86_400_000_000
            keys["expired"] = store.create("expired", ["admin"], days=1, now=past)[0]
            keys["revoked"], revoked = store.create("revoked", ["admin"])
            store.revoke(revoked.prefix)
            keys["wrong"] = "mf_" + "x" * 43

            port = api.daemon.http.port
            assert port is not None
            checked = 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for (method, rule), scope in {**SCOPES, **MCP_SCOPES}.items():
                    for credential in CREDENTIALS:
                        headers = {} if credential == "none" else {"X-API-Key": keys[credential]}
                        body = initialize(extra=headers) if rule in MCP_PATHS else {"headers": headers}
                        if method == "POST" and rule == "/auth/api-keys":
                            body = {"json": {"name": "table", "scopes": ["read"]}, "headers": headers}
                        elif method == "DELETE" and rule in MCP_PATHS:
                            body = {"headers": {**JSON_HEADERS, **headers}}
                        response = await client.request(method, concrete(rule), params=QUERY, **body)
                        denial = expected_denial(scope, credential)
                        where = (method, rule, credential, response.text[:200])
                        if denial is None:
                            assert response.status_code not in (401, 403, 500), where
                        else:
                            assert response.status_code == denial, where
                            assert set(response.json()) == {"error", "detail"}, where
                        checked += 1
            assert checked == len(CREDENTIALS) * (len(SCOPES) + len(MCP_SCOPES))
