"""MCP at /mcp over real HTTP on 127.0.0.1: the official SDK client in both protocol eras against a daemon fed
by the simulator, every tool's structured result against the matching HTTP route, and the spec's answers to
a foreign Origin, a missing key, an unknown tool, bad arguments and an unknown session. Also: the SDK is
loaded only by the first request that reaches it, once, off the event loop.

The simulator is frozen (`max_frames`, books barely moving) once the first trades are in, so the data
barely changes; the daemon's own clock still moves some of it (samples closing, periodic snapshots,
heartbeats), so an MCP answer and the HTTP answer right after it are read again until they agree. Only fields
that tick with every read (uptimes, rates, message ages) are left out of the comparison.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import httpx2
import mcp_types as types
import pytest
import trio
from jsonschema import Draft7Validator  # type: ignore[import-untyped]
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from marketflow.api import mcp as mcp_module
from marketflow.api.app import create_app
from marketflow.api.keys import KeyStore, key_store_path
from marketflow.api.mcp import TOOLS, McpAsgi, McpStatistics, build_asgi, origin_allowed
from marketflow.api.mcp_routes import register_mcp_routes
from marketflow.api.queries import QueryContext
from marketflow.api.ring import TradeRing
from marketflow.api.server import HttpServer
from marketflow.daemon import Daemon
from marketflow.model import us_to_iso
from marketflow.runtime.bus import Overflow
from marketflow.sim import SimConfig, SimServer
from tests.api.conftest import Api
from tests.conftest import sim_config, wait_for

MODERN, LEGACY = "2026-07-28", "2025-11-25"
JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
FRAMES = 40
CHANNELS = {
    "spot": ("trades", "book", "ticker"),
    "linear": ("trades", "book", "ticker", "derivatives", "liquidations"),
}
Headers = dict[str, str] | None


@asynccontextmanager
async def running_mcp(tmp_path: Path, *, listen: str = "127.0.0.1:0") -> AsyncIterator[Api]:
    """Simulator (frozen after FRAMES frames per tape), daemon with trades and books, HTTP server with MCP."""
    sim = SimServer(SimConfig(seed=5, rate=400, max_frames=FRAMES, book_rate=0.01))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = sim_config(tmp_path, sim, flush_interval_s=0.02)
        # No watchdog reconnects while the frozen tapes are silent: status and gaps stay put.
        feeds = tuple(
            attrs.evolve(f, channels=CHANNELS[f.market], stale_timeout_s=120.0) for f in config.feeds
        )
        config = attrs.evolve(
            config, feeds=feeds, http=attrs.evolve(config.http, listen=listen, trades_ring=500)
        )
        daemon = Daemon(config)
        ring = getattr(daemon, "ring", None)
        if not isinstance(ring, TradeRing):
            ring = TradeRing(daemon.trade_bus.subscribe("api-ring", 64, Overflow.DROP_OLDEST), 500)
            nursery.start_soon(ring.run)
        ctx = QueryContext(daemon, ring, getattr(daemon, "analytics", None))
        await nursery.start(daemon.run)
        app = create_app(ctx)
        register_mcp_routes(app, ctx)
        server = HttpServer(ctx, config, app=app, asgi_factory=build_asgi)
        await nursery.start(server.run)
        url = f"http://127.0.0.1:{server.port}"
        yield Api(url, daemon, ctx, ring, server, sim, KeyStore(key_store_path(config.daemon.state_dir)))
        server.request_stop()
        with trio.move_on_after(5):
            await daemon.stop()
        nursery.cancel_scope.cancel()


async def wait_frozen(api: Api) -> None:
    """Until every tape has sent its frames, every book is synced and storage holds every trade."""
    markets = [(f.exchange, s) for f in api.daemon.config.feeds for s in f.symbols]

    def settled() -> bool:
        children = api.daemon.supervisor.statistics().children
        writer: Any = next((c.actor for c in children if c.name == "storage"), None)
        return (
            api.sim.statistics().frames_sent >= FRAMES * len(markets)
            and all(
                (v := api.daemon.books.view(e, s)) is not None and v.status == "synced" for e, s in markets
            )
            and writer is not None
            and writer.rows_written >= len(api.sim.delivered_trades())
        )

    await wait_for(settled)


@asynccontextmanager
async def mcp_client(api: Api, mode: str, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=headers, timeout=10) as http:
        transport = streamable_http_client(api.url + "/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


@pytest.fixture
async def frozen(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_mcp(tmp_path) as api:
        with trio.fail_after(15):
            await wait_frozen(api)
        yield api


def time_range(api: Api) -> tuple[int, str]:
    """`since` (epoch ms, an hour back) and `until` (ISO, just after the last trade) of the frozen data."""
    newest = max(
        t.ts
        for f in api.daemon.config.feeds
        for s in f.symbols
        for t in api.ring.recent(f.exchange, s, limit=1)
    )
    return (newest // 1000) - 3_600_000, us_to_iso(newest + 1000)


def cases(api: Api) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    """(tool, arguments, HTTP path, HTTP query) asking the same question both ways."""
    since, until = time_range(api)
    window = {"since": since, "until": until}
    return [
        ("ping", {}, "/mcp/ping", {}),
        ("system_info", {}, "/mcp/info", {}),
        ("get_status", {}, "/collectors/status", {}),
        ("get_status", {"actor": "bybit-spot"}, "/collectors/status/bybit-spot", {}),
        ("list_markets", {}, "/markets", {}),
        (
            "get_recent_trades",
            {"exchange": "bybit", "symbol": "BTC-USDT", "limit": 7},
            "/collectors/trades",
            {"exchange": "bybit", "symbol": "BTC-USDT", "limit": 7},
        ),
        (
            "get_recent_trades",
            {"exchange": "bybit", "symbol": "btcusdt", "market": "linear", "limit": 5000, **window},
            "/collectors/trades",
            {"exchange": "bybit", "symbol": "btcusdt", "market": "linear", "limit": 5000, **window},
        ),
        (
            "get_orderbook",
            {"exchange": "bybit", "symbol": "ETH-USDT-PERP", "depth": 5},
            "/book/bybit/ETH-USDT-PERP",
            {"depth": 5},
        ),
        ("get_gaps", {"exchange": "bybit"}, "/gaps", {"exchange": "bybit"}),
        (
            "get_candles",
            {"exchange": "bybit", "symbol": "ETH-USDT", "interval": "1m", **window},
            "/candles",
            {"exchange": "bybit", "symbol": "ETH-USDT", "interval": "1m", **window},
        ),
        (
            "get_candles",
            {"exchange": "bybit", "symbol": "BTC-USDT", "interval": "7s", "since": 0, "until": until},
            "/candles",
            {"exchange": "bybit", "symbol": "BTC-USDT", "interval": "7s", "since": 0, "until": until},
        ),
        (
            "get_volume_profile",
            {"exchange": "bybit", "symbol": "BTC-USDT-PERP", "bin": "0.5", **window},
            "/volume-profile",
            {"exchange": "bybit", "symbol": "BTC-USDT-PERP", "bin": "0.5", **window},
        ),
        (
            "get_order_flow",
            {"exchange": "bybit", "symbol": "ETH-USDT", "footprint": True, "bin": 1, **window},
            "/order-flow",
            {"exchange": "bybit", "symbol": "ETH-USDT", "footprint": "true", "bin": "1", **window},
        ),
        ("get_ticker", {"exchange": "bybit", "symbol": "BTC-USDT-PERP"}, "/ticker/bybit/BTC-USDT-PERP", {}),
        (
            "get_derivatives",
            {"exchange": "bybit", "symbol": "BTCUSDT", "market": "linear", "limit": 50},
            "/derivatives",
            {"exchange": "bybit", "symbol": "BTCUSDT", "market": "linear", "limit": 50},
        ),
        (
            "get_liquidations",
            {"exchange": "bybit", "symbol": "BTC-USDT-PERP", **window},
            "/liquidations",
            {"exchange": "bybit", "symbol": "BTC-USDT-PERP", **window},
        ),
        # One asset on every market (SPEC §15): the same tools, their outputSchema still holds.
        ("get_candles", {"asset": "BTC", **window}, "/candles", {"asset": "BTC", **window}),
        (
            "get_volume_profile",
            {"asset": "btc", "markets": "perp", **window},
            "/volume-profile",
            {"asset": "btc", "markets": "perp", **window},
        ),
        ("get_order_flow", {"asset": "BTC", **window}, "/order-flow", {"asset": "BTC", **window}),
        ("get_liquidations", {"asset": "BTC", **window}, "/liquidations", {"asset": "BTC", **window}),
        ("get_derivatives", {"asset": "BTC", "limit": 50}, "/derivatives", {"asset": "BTC", "limit": 50}),
    ]


ASSET_TOOLS = ("get_candles", "get_volume_profile", "get_order_flow", "get_derivatives", "get_liquidations")
"""Tools taking exchange and symbol, or asset instead (none of them required)."""

TICKING = {"uptime_s", "msgs_per_s", "last_message_age_s", "lag_ms", "queued_batches"}
"""Fields that change with the clock between the MCP call and the HTTP call."""


def steady(value: Any) -> Any:
    """`value` without the fields that tick with the clock."""
    if isinstance(value, dict):
        return {k: "<ticks>" if k in TICKING else steady(v) for k, v in value.items()}
    if isinstance(value, list):
        return [steady(v) for v in value]
    return value


async def check_tools_match_http(api: Api, client: Client, http: httpx.AsyncClient) -> None:
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert (
        list(listed)
        == list(TOOLS)
        == [
            "ping",
            "system_info",
            "get_status",
            "list_markets",
            "get_recent_trades",
            "get_orderbook",
            "get_gaps",
            "get_candles",
            "get_volume_profile",
            "get_order_flow",
            "get_ticker",
            "get_derivatives",
            "get_liquidations",
        ]
    )
    for tool in listed.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.input_schema["type"] == "object" and tool.input_schema["additionalProperties"] is False
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert listed["get_recent_trades"].input_schema["required"] == ["exchange", "symbol"]

    called = set()
    answers: dict[str, Any] = {}
    for name, arguments, path, params in cases(api):

        def tool_answer(result: types.CallToolResult, name: str = name) -> Any:
            # The SDK client checks structuredContent against the tool's outputSchema (JSON Schema 2020-12)
            # as it returns; the older draft the TypeScript SDK and the Inspector validate with must accept
            # it too.
            assert result.is_error is False, (name, result.content)
            Draft7Validator(listed[name].output_schema).validate(result.structured_content)
            assert isinstance(result.content[0], types.TextContent) and result.content[0].text, name
            return result.structured_content

        async def http_answer(path: str = path, params: dict[str, Any] = params) -> Any:
            response = await http.get(path, params=params)
            assert response.status_code == 200, (path, response.text)
            if path.startswith("/collectors/status/"):
                return {"status": api.daemon.health().status, "actors": [response.json()]}
            return response.json()

        result = await answers_agree(
            name, functools.partial(client.call_tool, name, arguments), tool_answer, http_answer
        )
        called.add(name)
        if "asset" not in arguments:  # the per-market answers are checked below
            answers[name] = result.structured_content
    assert called == set(TOOLS)
    # The data really is there: the comparisons above are not of empty answers.
    assert answers["get_recent_trades"]["count"] > 7
    assert len(answers["get_orderbook"]["bids"]) == len(answers["get_orderbook"]["asks"]) == 5
    assert answers["get_candles"]["candles"][0]["trades"] > 0
    assert answers["get_volume_profile"]["poc"] is not None and answers["get_volume_profile"]["bins"]
    assert answers["get_order_flow"]["bars"] and "footprint" in answers["get_order_flow"]["bars"][-1]
    assert answers["get_ticker"]["mark_price"] is not None and answers["get_ticker"]["bid"] is not None

    # Every tool with its defaults, too: results still match the declared outputSchema.
    for name in TOOLS:
        market_tool = "exchange" in listed[name].input_schema.get("required", ()) or name in ASSET_TOOLS
        arguments = {"exchange": "bybit", "symbol": "BTC-USDT"} if market_tool else {}
        result = await client.call_tool(name, arguments)
        assert result.is_error is False, (name, result.content)

    resources = {r.uri: r for r in (await client.list_resources()).resources}
    assert set(resources) == {"marketflow://markets", "marketflow://status"}
    for uri, path in (("marketflow://markets", "/markets"), ("marketflow://status", "/collectors/status")):

        def resource_answer(read: types.ReadResourceResult, uri: str = uri) -> Any:
            assert isinstance(read.contents[0], types.TextResourceContents), uri
            return json.loads(read.contents[0].text)

        async def http_resource(path: str = path) -> Any:
            return (await http.get(path)).json()

        await answers_agree(uri, functools.partial(client.read_resource, uri), resource_answer, http_resource)


AGREE_TRIES = 20
T = TypeVar("T")


async def answers_agree(
    what: str,
    mcp_read: Callable[[], Awaitable[T]],
    mcp_answer: Callable[[T], Any],
    http_answer: Callable[[], Awaitable[Any]],
) -> T:
    """The MCP read (checked by `mcp_answer`) whose answer equals the HTTP answer taken right after it.

    The frozen simulator stops the market, not the daemon's own clock: a derivatives sample closes a second
    after the last tick, book snapshots are written every few seconds, heartbeats and a minute's candle come
    and go. One of those landing between an MCP read and its HTTP twin made them differ under load (a moment
    apart becomes a second apart): then both are read again, until they agree.
    """
    for _ in range(AGREE_TRIES):
        read = await mcp_read()
        got, expected = steady(mcp_answer(read)), steady(await http_answer())
        if got == expected:
            return read
    assert got == expected, f"{what}: MCP and HTTP still differ after {AGREE_TRIES} reads of both"
    return read


async def test_both_eras_answer_as_the_http_api_does(frozen: Api) -> None:
    # One bound per era: each is some 90 tool, resource and HTTP calls, a few seconds alone and close to
    # 20 s on a loaded 2-core machine, where one bound over both eras tripped.
    async with httpx.AsyncClient(base_url=frozen.url, timeout=10) as http:
        with trio.fail_after(20):
            async with mcp_client(frozen, "auto") as client:
                assert client.protocol_version == MODERN
                await check_tools_match_http(frozen, client, http)
        with trio.fail_after(20):
            async with mcp_client(frozen, "legacy") as client:
                assert client.protocol_version == LEGACY
                assert client.server_info is not None and client.server_info.name == "marketflow"
                assert "list_markets" in (client.instructions or "")
                with pytest.warns(MCPDeprecationWarning):  # the protocol's own ping, gone in 2026-07-28
                    await client.send_ping()
                await check_tools_match_http(frozen, client, http)


def modern(
    method: str, params: dict[str, Any] | None = None, *, name: str | None = None, extra: Headers = None
) -> dict[str, Any]:
    """Keyword arguments of a raw 2026-07-28 POST: `_meta` envelope and routing headers (plus `extra`)."""
    meta = {types.PROTOCOL_VERSION_META_KEY: MODERN, types.CLIENT_CAPABILITIES_META_KEY: {}}
    headers = {**JSON_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method, **(extra or {})}
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**(params or {}), "_meta": meta}}
    return {"json": body, "headers": headers}


def initialize(version: str = LEGACY, extra: Headers = None) -> dict[str, Any]:
    """Keyword arguments of a raw 2025-11-25 `initialize` POST (plus `extra` headers)."""
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    return {"json": body, "headers": {**JSON_HEADERS, **(extra or {})}}


def in_session(session: str, body: dict[str, Any], extra: Headers = None) -> dict[str, Any]:
    """Keyword arguments of a raw POST in a 2025-11-25 session (plus `extra` headers)."""
    headers = {**JSON_HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY, **(extra or {})}
    return {"json": {"jsonrpc": "2.0", **body}, "headers": headers}


async def test_protocol_answers_of_both_eras(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_mcp(tmp_path) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            # 2026-07-28: stateless, no session id; an unknown tool is a JSON-RPC error (HTTP 400).
            discover = await http.post("/mcp", **modern("server/discover"))
            assert discover.status_code == 200 and "mcp-session-id" not in discover.headers
            assert MODERN in discover.json()["result"]["supportedVersions"]
            unknown = await http.post("/mcp", **modern("tools/call", {"name": "nope"}, name="nope"))
            assert unknown.status_code == 400
            assert unknown.json()["error"]["code"] == types.INVALID_PARAMS
            assert "nope" in unknown.json()["error"]["message"]
            mismatch = await http.post("/mcp", **modern("tools/call", {"name": "ping"}, name="get_gaps"))
            assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == types.HEADER_MISMATCH

            # 2025-11-25: initialize negotiates the version (an unknown one gets the server's latest).
            negotiated = await http.post("/mcp", **initialize("1999-01-01"))
            assert negotiated.json()["result"]["protocolVersion"] == LEGACY
            opened = await http.post("/mcp", **initialize())
            assert opened.status_code == 200 and opened.json()["result"]["protocolVersion"] == LEGACY
            assert opened.json()["result"]["serverInfo"]["name"] == "marketflow"
            session = opened.headers["mcp-session-id"]
            initialized = await http.post(
                "/mcp", **in_session(session, {"method": "notifications/initialized"})
            )
            assert initialized.status_code == 202
            ping = await http.post("/mcp", **in_session(session, {"id": 2, "method": "ping"}))
            assert ping.status_code == 200 and ping.json() == {"jsonrpc": "2.0", "id": 2, "result": {}}
            call = {"id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}
            unknown = (await http.post("/mcp", **in_session(session, call))).json()
            assert unknown["id"] == 3 and unknown["error"]["code"] == types.INVALID_PARAMS
            # No server-initiated messages, so no GET stream.
            stream = await http.get(
                "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session}
            )
            assert stream.status_code == 405 and "POST" in stream.headers["allow"]
            # DELETE ends the session; afterwards, and for an id never issued, the answer is 404.
            ended = await http.delete(
                "/mcp", headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY}
            )
            assert ended.status_code == 200
            gone = await http.post("/mcp", **in_session(session, {"id": 4, "method": "ping"}))
            assert gone.status_code == 404
            never = await http.post("/mcp", **in_session("f" * 32, {"id": 5, "method": "ping"}))
            assert never.status_code == 404
            assert (await http.delete("/mcp", headers={"Mcp-Session-Id": "f" * 32})).status_code == 404

            # Origin: a present, foreign one is a 403, on every /mcp path; this server's own passes.
            for origin in ("http://evil.example", "null", "http://localhost:8000.evil.example", "file://"):
                refused = await http.post("/mcp", **initialize(extra={"Origin": origin}))
                assert refused.status_code == 403, origin
                assert refused.json()["error"] == "forbidden"
            assert (
                await http.get("/mcp/ping", headers={"Origin": "https://evil.example"})
            ).status_code == 403
            for origin in ("http://127.0.0.1:6274", "http://localhost:3000", "http://[::1]:8000"):
                allowed = await http.post("/mcp", **initialize(extra={"Origin": origin}))
                assert allowed.status_code == 200, origin
            assert (await http.post("/mcp/", **initialize())).json()["result"]["protocolVersion"] == LEGACY
            assert (await http.get("/mcp/ping")).json() == {"pong": True}
            assert (await http.get("/mcp/info")).json()["name"] == "marketflow"
            # The rest of the API is untouched by the composition.
            assert (await http.get("/ping")).json() == {"pong": True}


BAD_ARGUMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("get_recent_trades", {"exchange": "bybit"}, "symbol"),
    ("get_recent_trades", {"exchange": "bybit", "symbol": "BTC-USDT", "limit": 0}, "limit"),
    ("get_recent_trades", {"exchange": "bybit", "symbol": "BTC-USDT", "limit": "many"}, "limit"),
    ("get_recent_trades", {"exchange": "bybit", "symbol": "BTC-USDT", "since": "yesterday"}, "since"),
    ("get_recent_trades", {"exchange": "nowhere", "symbol": "BTC-USDT"}, "exchange"),
    ("get_orderbook", {"exchange": "bybit", "symbol": "DOGE-USDT"}, "symbol"),
    ("get_orderbook", {"exchange": "bybit", "symbol": "BTC-USDT", "depth": -3}, "depth"),
    ("get_candles", {"exchange": "bybit", "symbol": "BTC-USDT", "interval": "7x"}, "interval"),
    (
        "get_candles",
        {"exchange": "bybit", "symbol": "BTC-USDT", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01"},
        "until",
    ),
    ("get_volume_profile", {"exchange": "bybit", "symbol": "BTC-USDT", "bin": "-1"}, "bin"),
    ("get_order_flow", {"exchange": "bybit", "symbol": "BTC-USDT", "footprint": [1]}, "footprint"),
    (
        "get_order_flow",
        {"exchange": "bybit", "symbol": "BTC-USDT", "footprint": True, "bin": "1e-990"},
        "bin",
    ),
    ("get_candles", {"exchange": "bybit", "symbol": "BTC-USDT", "interval": "9" * 30 + "d"}, "interval"),
    ("get_recent_trades", {"exchange": "bybit", "symbol": "BTC-USDT", "since": "\u0661\u0662"}, "since"),
    ("get_status", {"actor": "nope"}, "actor"),
    ("get_gaps", {"exchange": "bybit", "sybmol": "BTC-USDT"}, "sybmol"),
    ("ping", {"extra": 1}, "extra"),
]


async def test_tool_errors_name_the_argument_in_both_eras(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_mcp(tmp_path) as api:
            for mode in ("auto", "legacy"):
                async with mcp_client(api, mode) as client:
                    for name, arguments, param in BAD_ARGUMENTS:
                        result = await client.call_tool(name, arguments)
                        assert result.is_error is True, (mode, name, arguments)
                        assert result.structured_content is None
                        assert isinstance(result.content[0], types.TextContent)
                        assert f"Invalid argument {param!r}" in result.content[0].text, result.content[0].text
                    with pytest.raises(MCPError) as raised:
                        await client.call_tool("get_weather", {})
                    assert raised.value.error.code == types.INVALID_PARAMS
                    assert "get_weather" in raised.value.error.message
                    # A protocol error does not break the connection.
                    assert (await client.call_tool("ping", {})).structured_content == {"pong": True}


async def test_reads_need_a_key_off_loopback(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_mcp(tmp_path, listen="0.0.0.0:0") as api:
            async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
                refused = await http.post("/mcp", **initialize())
                assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
                assert refused.headers["www-authenticate"].startswith("Bearer")
                wrong = modern("server/discover", extra={"X-API-Key": "mf_" + "x" * 43})
                assert (await http.post("/mcp", **wrong)).status_code == 401
                assert (await http.get("/mcp/info")).status_code == 401
                assert (await http.get("/mcp/ping")).json() == {"pong": True}  # liveness stays open

                key, _ = api.keys.create("mcp", ["read"])
                other, _ = api.keys.create("other", ["read"])
                assert (await http.get("/mcp/info", headers={"X-API-Key": key})).status_code == 200
                # A 2025-11-25 session belongs to the key that opened it: another key does not find it.
                opened = await http.post("/mcp", **initialize(extra={"X-API-Key": key}))
                session = opened.headers["mcp-session-id"]
                ping = {"id": 2, "method": "ping"}
                owner = await http.post("/mcp", **in_session(session, ping, {"X-API-Key": key}))
                assert owner.status_code == 200
                stolen = await http.post("/mcp", **in_session(session, ping, {"X-API-Key": other}))
                assert stolen.status_code == 404
                # Off loopback, only the listener's own address (here: any IP the client used) is an origin.
                evil = initialize(extra={"X-API-Key": key, "Origin": "http://evil.example"})
                assert (await http.post("/mcp", **evil)).status_code == 403

            for mode, headers in (
                ("auto", {"X-API-Key": key}),
                ("legacy", {"Authorization": f"Bearer {key}"}),
            ):
                async with mcp_client(api, mode, headers) as client:
                    assert client.protocol_version == (MODERN if mode == "auto" else LEGACY)
                    assert (await client.call_tool("list_markets", {})).structured_content["markets"]


def test_origin_rule() -> None:
    # Loopback listener: loopback names on any port, exactly; nothing else.
    for origin in ("http://127.0.0.1:8000", "http://localhost", "https://LOCALHOST:1", "http://[::1]:9"):
        assert origin_allowed(origin, "127.0.0.1", "127.0.0.1:8000"), origin
    for origin in (
        "http://localhost.evil.example",
        "http://localhost:8000.evil.example",
        "http://127.0.0.1.nip.io:8000",
        "http://evil.example",
        "ftp://localhost",
        "null",
        "",
        "http://127.0.0.1:99999",
    ):
        assert not origin_allowed(origin, "127.0.0.1", "127.0.0.1:8000"), origin
    # A specific address: that address only.
    assert origin_allowed("http://10.0.0.5:8000", "10.0.0.5", "10.0.0.5:8000")
    assert not origin_allowed("http://10.0.0.6:8000", "10.0.0.5", "10.0.0.5:8000")
    assert not origin_allowed("http://localhost:8000", "10.0.0.5", "10.0.0.5:8000")
    # Every interface: loopback, or the Host the client used when it is an IP (never a DNS name, which a
    # rebinding attacker controls along with the Origin).
    assert origin_allowed("http://192.168.1.9:8000", "0.0.0.0", "192.168.1.9:8000")
    assert origin_allowed("http://[fe80::1]:8000", "::", "[fe80::1]:8000")
    assert not origin_allowed("http://rebind.example:8000", "0.0.0.0", "rebind.example:8000")
    assert not origin_allowed("http://192.168.1.9:8000", "0.0.0.0", "192.168.1.10:8000")


# -- the SDK loads lazily -----------------------------------------------------------------------------------

SDK_MODULES = ("mcp", "mcp_types", "starlette", "sse_starlette", "uvicorn", "httpx2", "anyio", "cryptography")
"""What `import mcp.server...` drags in. Not pydantic: quart_schema imports it whenever it is installed."""


def test_import_leaves_the_mcp_sdk_out() -> None:
    code = (
        "import sys, marketflow.daemon, marketflow.cli, marketflow.api.mcp\n"
        f"print(' '.join(m for m in {SDK_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == []


def mcp_app(api: Api) -> McpAsgi:
    app = api.server.asgi
    assert isinstance(app, McpAsgi)
    return app


async def test_only_a_request_that_reaches_the_sdk_loads_it(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_mcp(tmp_path, listen="0.0.0.0:0") as api:
            app = mcp_app(api)
            key, _ = api.keys.create("mcp", ["read"])
            async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
                assert (await http.post("/mcp", **initialize())).status_code == 401
                foreign = initialize(extra={"X-API-Key": key, "Origin": "http://evil.example"})
                assert (await http.post("/mcp", **foreign)).status_code == 403
                stream = await http.get("/mcp", headers={"X-API-Key": key, "Accept": "text/event-stream"})
                assert stream.status_code == 405
                assert (await http.get("/mcp/ping")).status_code == 200
                assert (await http.get("/mcp/info", headers={"X-API-Key": key})).status_code == 200
                assert (await http.get("/ping")).status_code == 200
                assert app.statistics() == McpStatistics(False, 0, False)

                opened = await http.post("/mcp", **initialize(extra={"X-API-Key": key}))
                assert opened.status_code == 200 and "mcp-session-id" in opened.headers
                assert app.statistics() == McpStatistics(True, 1, True)
                discover = await http.post("/mcp", **modern("server/discover", extra={"X-API-Key": key}))
                assert discover.status_code == 200
                assert app.statistics().sdk_loads == 1
            api.server.request_stop()
            await wait_for(lambda: not app.statistics().serving)


async def test_concurrent_first_requests_share_one_load_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = mcp_module._load_transport
    threads: list[threading.Thread] = []
    loading = threading.Event()
    released = threading.Event()  # set by a Trio task: proof the event loop runs while the SDK loads

    def slow_load(ctx: QueryContext) -> Any:
        threads.append(threading.current_thread())
        loading.set()
        # Held until the event loop lets it go: on the event loop thread itself this could never return.
        if not released.wait(10):
            raise AssertionError("the event loop did not run while the SDK loaded")
        return load(ctx)

    monkeypatch.setattr(mcp_module, "_load_transport", slow_load)
    with trio.fail_after(20):
        async with running_mcp(tmp_path) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            answers: list[httpx.Response] = []

            async def post(kwargs: dict[str, Any]) -> None:
                answers.append(await http.post("/mcp", **kwargs))

            async def release_once_loading() -> None:
                await trio.to_thread.run_sync(loading.wait, abandon_on_cancel=True)
                released.set()

            async with trio.open_nursery() as requests:
                requests.start_soon(release_once_loading)
                requests.start_soon(post, initialize())
                requests.start_soon(post, modern("server/discover"))

            assert [a.status_code for a in answers] == [200, 200]
            assert len(threads) == 1 and threads[0] is not threading.main_thread()
            assert mcp_app(api).statistics() == McpStatistics(True, 1, True)


async def test_a_failed_load_is_a_503_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load = mcp_module._load_transport
    failures = [ImportError("No module named 'mcp' (test)")]

    def flaky_load(ctx: QueryContext) -> Any:
        if failures:
            raise failures.pop()
        return load(ctx)

    monkeypatch.setattr(mcp_module, "_load_transport", flaky_load)
    with trio.fail_after(20):
        async with running_mcp(tmp_path) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            failed = await http.post("/mcp", **initialize())
            assert failed.status_code == 503 and failed.json()["error"] == "unavailable"
            assert "MCP SDK could not be loaded" in failed.json()["detail"]
            assert "No module named 'mcp' (test)" in failed.json()["detail"]
            assert mcp_app(api).statistics() == McpStatistics(False, 1, False)
            assert (await http.post("/mcp", **initialize())).status_code == 200
            assert mcp_app(api).statistics() == McpStatistics(True, 2, True)
