"""A client that disconnects in the middle of a `/mcp` request body: one structured WARNING (rate-limited
like every repeated warning), never the MCP SDK's ERROR traceback; the server goes on serving."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from marketflow.api.app import create_app
from marketflow.api.mcp import build_asgi
from marketflow.api.queries import QueryContext
from marketflow.api.server import HttpServer
from marketflow.config import default_config
from marketflow.daemon import Daemon
from marketflow.logs import RateLimitFilter
from tests.api.test_mcp import LEGACY, initialize
from tests.conftest import wait_for

WARNING = "MCP client disconnected in the middle of its request body"


async def _cut_short(port: int, sent: bytes, declared: int) -> None:
    """POST /mcp declaring `declared` body bytes, send `sent` of them, then close the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    head = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {LEGACY}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    await stream.send_all(head.encode() + sent)
    await stream.aclose()


async def test_a_body_cut_short_is_one_warning_not_an_sdk_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = default_config(env={})
    config = attrs.evolve(
        config,
        daemon=attrs.evolve(config.daemon, state_dir=str(tmp_path)),
        http=attrs.evolve(config.http, listen="127.0.0.1:0"),
    )
    ctx = QueryContext(Daemon(config))
    server = HttpServer(ctx, config, app=create_app(ctx), asgi_factory=build_asgi)
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            body = json.dumps(initialize()["json"]).encode()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
                assert (await client.post("/mcp", **initialize())).status_code == 200  # the SDK is loaded
                for _ in range(3):
                    await _cut_short(server.port, body[:20], len(body) + 100)

                def warnings() -> list[logging.LogRecord]:
                    return [r for r in caplog.records if r.getMessage() == WARNING]

                await wait_for(lambda: len(warnings()) == 3, 0.01)
                # Still serving.
                assert (await client.post("/mcp", **initialize())).status_code == 200
            server.request_stop()
            nursery.cancel_scope.cancel()
    records = warnings()
    assert {(r.name, r.levelno) for r in records} == {("marketflow.http", logging.WARNING)}
    assert records[0].received_bytes == 20 and records[0].client == "peer 127.0.0.1"  # type: ignore[attr-defined]
    assert records[0].exc_info is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    # Repeats are rate-limited by the handler's filter like every repeated warning: 5 a minute get out.
    limiter = RateLimitFilter(burst=2, clock=lambda: 0.0)
    assert [limiter.filter(r) for r in records] == [True, True, False]
