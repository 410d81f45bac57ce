"""2025-11-25 MCP sessions per client: a quota per API key or peer address, and a short idle expiry.

One client opening sessions in a loop must not lock the others out. Over real HTTP: the default quota from
one peer, with another peer and a key still served. In process (the real `McpAsgi` and MCP SDK, driven
through httpx's ASGI transport) under `autojump_clock`: exact expiry times and `Retry-After`, and a
session in use never expires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from marketflow.api.app import create_app
from marketflow.api.mcp import McpAsgi
from marketflow.api.mcp_sessions import SessionLedger, SessionLimits
from marketflow.api.queries import QueryContext
from marketflow.config import default_config
from marketflow.daemon import Daemon
from tests.api.test_mcp import LEGACY, in_session, initialize, modern, running_mcp


def opened_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    session: str = response.headers["mcp-session-id"]
    return session


def refused_for_quota(response: httpx.Response) -> int:
    """The `Retry-After` of a 429 quota answer (a JSON-RPC error naming what to do)."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert response.json()["jsonrpc"] == "2.0" and error["code"] == -32000
    assert "too many open MCP sessions for this client" in error["message"]
    assert "DELETE /mcp" in error["message"]
    return int(response.headers["retry-after"])


async def test_one_peer_at_its_quota_leaves_other_clients_served(tmp_path: Path) -> None:
    per_client = SessionLimits().per_client
    with trio.fail_after(60):
        async with running_mcp(tmp_path) as api:
            key, _ = api.keys.create("agent", ["read"])
            other_peer = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with (
                httpx.AsyncClient(base_url=api.url, timeout=10) as greedy,
                httpx.AsyncClient(base_url=api.url, timeout=10, transport=other_peer) as neighbour,
            ):
                sessions = [opened_id(await greedy.post("/mcp", **initialize())) for _ in range(per_client)]
                assert len(set(sessions)) == per_client
                retry = refused_for_quota(await greedy.post("/mcp", **initialize()))
                assert 1 <= retry <= SessionLimits().idle_s
                # Everyone else is unaffected: another peer, and the same peer with a key.
                opened_id(await neighbour.post("/mcp", **initialize()))
                opened_id(await greedy.post("/mcp", **initialize(extra={"X-API-Key": key})))
                # The stateless 2026-07-28 era opens no session and is not counted.
                assert (await greedy.post("/mcp", **modern("server/discover"))).status_code == 200
                # The greedy peer's sessions still work; ending one frees a place.
                ping = await greedy.post("/mcp", **in_session(sessions[0], {"id": 2, "method": "ping"}))
                assert ping.status_code == 200
                ended = await greedy.delete(
                    "/mcp", headers={"Mcp-Session-Id": sessions[0], "MCP-Protocol-Version": LEGACY}
                )
                assert ended.status_code == 200
                opened_id(await greedy.post("/mcp", **initialize()))
                refused_for_quota(await greedy.post("/mcp", **initialize()))


@asynccontextmanager
async def in_process_mcp(tmp_path: Path, limits: SessionLimits) -> AsyncIterator[McpAsgi]:
    """The real McpAsgi (Quart app, MCP SDK) of a daemon that is built but not run; its lifespan runs."""
    config = default_config(env={})
    config = attrs.evolve(config, daemon=attrs.evolve(config.daemon, state_dir=str(tmp_path)))
    ctx = QueryContext(Daemon(config))
    app = McpAsgi(ctx, config.http, create_app(ctx), limits)
    started, stop = trio.Event(), trio.Event()
    startup = [{"type": "lifespan.startup"}]

    async def receive() -> dict[str, Any]:
        if startup:
            return startup.pop()
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await started.wait()
        yield app
        stop.set()


def asgi_client(app: McpAsgi, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app, client=(peer, 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")


async def test_unused_sessions_expire_at_the_idle_time_and_retry_after_says_when(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    limits = SessionLimits(total=50, per_client=2, idle_s=60.0)
    async with (
        in_process_mcp(tmp_path, limits) as app,
        asgi_client(app, "127.0.0.1") as client,
        asgi_client(app, "127.0.0.7") as other,
    ):
        t0 = trio.current_time()
        first = opened_id(await client.post("/mcp", **initialize()))
        await trio.sleep(10)
        second = opened_id(await client.post("/mcp", **initialize()))
        await trio.sleep(5)
        # Full: the first session is unused until t0 + 60, 45 s from now.
        assert refused_for_quota(await client.post("/mcp", **initialize())) == 45
        opened_id(await other.post("/mcp", **initialize()))
        await trio.sleep(20)  # t0 + 35: using the first session moves its expiry to t0 + 95
        ping = await client.post("/mcp", **in_session(first, {"id": 2, "method": "ping"}))
        assert ping.status_code == 200
        assert refused_for_quota(await client.post("/mcp", **initialize())) == 35  # the second's, at t0 + 70
        await trio.sleep_until(t0 + 70)
        third = opened_id(await client.post("/mcp", **initialize()))
        # The SDK closed the second session at that time too: it is gone, not just uncounted.
        gone = await client.post("/mcp", **in_session(second, {"id": 3, "method": "ping"}))
        assert gone.status_code == 404
        assert refused_for_quota(await client.post("/mcp", **initialize())) == 25  # the first's, at t0 + 95
        await trio.sleep_until(t0 + 95)
        assert (
            await client.post("/mcp", **in_session(first, {"id": 4, "method": "ping"}))
        ).status_code == 404
        alive = await client.post("/mcp", **in_session(third, {"id": 5, "method": "ping"}))
        assert alive.status_code == 200
        opened_id(await client.post("/mcp", **initialize()))
        # The other peer's session (unused since t0 + 15) expired at t0 + 75: two left, both this client's.
        stats = app.session_statistics()
        assert stats is not None and (stats.sessions, stats.opening, stats.clients, stats.refused) == (
            2,
            0,
            1,
            3,
        )
        assert trio.current_time() - t0 == 95


def test_a_session_in_flight_never_expires_and_settled_openings_free_their_place() -> None:
    ledger = SessionLedger(SessionLimits(total=10, per_client=1, idle_s=30.0))
    assert ledger.try_open("peer a", 0.0) is None
    assert ledger.try_open("peer a", 0.0) == 30.0  # the reservation counts: no other opening meanwhile
    ledger.opened("peer a", "s1", 1.0)
    ledger.begin("s1", 2.0)  # a long request: 100 s in flight
    assert ledger.try_open("peer a", 100.0) == 30.0
    ledger.end("s1", 102.0, gone=False)
    assert ledger.try_open("peer a", 131.0) == 1.0  # expires at 132: never less than a second
    assert ledger.try_open("peer a", 132.0) is None
    ledger.opened("peer a", None, 132.0)  # the opening request failed: its place is free again
    assert ledger.held("peer a") == 0 and ledger.owner("s1") is None
    assert ledger.statistics().refused == 3
