"""One client must not starve the others (issue 14.6, 14.8): connection cap, read and idle timeouts, accept
failures logged once a minute, stored-trade queries a few at a time within a deadline.

The HTTP server here serves a daemon that is built but not run (its SQLite store opened and filled by the
test), under trio's autojump clock: a slow query or a silent client makes virtual time jump straight to the
deadline that ends it, so every timeout is asserted to the exact virtual second.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

from marketflow.api import queries
from marketflow.api.connections import ACCEPT_RETRY_S
from marketflow.api.keys import KeyStore, key_store_path
from marketflow.api.limits import StorageQueryGate, StorageQueryRefused
from marketflow.api.mcp import TOOLS, OrderFlowArgs, build_asgi
from marketflow.api.queries import QueryContext, QueryError
from marketflow.api.server import HttpServer
from marketflow.config import FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.model import Trade
from marketflow.sim import SimConfig, SimServer

BASE_TS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000_000


@attrs.define
class Offline:
    url: str
    port: int
    server: HttpServer
    ctx: QueryContext


@asynccontextmanager
async def offline_api(tmp_path: Path, trades: int = 0, **http: Any) -> AsyncIterator[Offline]:
    """The HTTP (and MCP) server of a daemon that is not running, over `trades` stored BTC-USDT trades
    (one every 30 ms from 2026-01-01)."""
    base = default_config(env={})
    feed = FeedConfig(exchange="bybit", market="spot", symbols=("BTC-USDT",), channels=("trades",))
    config = attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path)),
        http=attrs.evolve(base.http, listen="127.0.0.1:0", **http),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/offline.db"),
        analytics=attrs.evolve(base.analytics, enabled=False),
        feeds=(feed,),
    )
    daemon = Daemon(config)
    await daemon.store.open()
    for start in range(0, trades, 20_000):
        batch = [
            Trade(
                "bybit",
                "BTC-USDT",
                str(i),
                Decimal(65_000 + i % 97),
                Decimal("0.010"),
                "buy" if i % 3 else "sell",
                BASE_TS + i * 30_000,
                BASE_TS + i * 30_000,
            )
            for i in range(start, min(trades, start + 20_000))
        ]
        await daemon.store.write_trades(batch)
    ctx = QueryContext(daemon)
    server = HttpServer(ctx, config, asgi_factory=build_asgi)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert server.port is not None
        yield Offline(f"http://127.0.0.1:{server.port}", server.port, server, ctx)
        server.request_stop()
    await daemon.store.close()


async def until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def test_headers_without_a_body_are_disconnected_after_the_read_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with offline_api(tmp_path, read_timeout_s=7, idle_timeout_s=3) as api:
        admin, _ = KeyStore(key_store_path(str(tmp_path))).create("root", ["admin"])
        async with httpx.AsyncClient(base_url=api.url, timeout=600) as client:
            # Load the MCP SDK first, with the clock stopped: the import takes real time, not the
            # request's, and a request whose answer takes longer than the read timeout is cut too.
            autojump_clock.autojump_threshold = math.inf
            body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            await client.post("/mcp", json=body, headers={"Accept": "application/json, text/event-stream"})
            autojump_clock.autojump_threshold = 0
            for path, key in (("/auth/api-keys", admin), ("/mcp", "")):
                stream = await trio.open_tcp_stream("127.0.0.1", api.port)
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                    "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                    "Content-Length: 100\r\n\r\n"
                )
                await stream.send_all(head.encode())
                start = trio.current_time()
                with trio.fail_after(600):  # without a read timeout: never (or Quart's 60 s body timeout)
                    answer = await until_closed(stream)
                assert trio.current_time() - start == 7, (path, answer[:200])
                # The body deadline (a 408) and the read timeout (no answer) end it at the same moment.
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
                await stream.aclose()
            # Others are served meanwhile and after.
            assert (await client.get("/ping")).json() == {"pong": True}


async def test_a_body_sent_a_byte_at_a_time_is_cut_at_the_read_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with offline_api(tmp_path, read_timeout_s=7, idle_timeout_s=3) as api:
        admin, _ = KeyStore(key_store_path(str(tmp_path))).create("root", ["admin"])
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        head = (
            f"POST /auth/api-keys HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {admin}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        await stream.send_all(head.encode())
        start = trio.current_time()

        async def trickle() -> None:
            # Each byte well within the read timeout, so only a deadline on the whole body ends it.
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for _ in range(99):
                    await trio.sleep(2)
                    await stream.send_all(b" ")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with trio.fail_after(600):  # without a body deadline: 198 s, or Quart's 60 s body timeout
                answer = await until_closed(stream)
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start == 7
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error":"request_timeout"' in answer and b"http.read_timeout_s" in answer
        await stream.aclose()


async def test_past_the_cap_new_connections_wait_until_one_closes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with offline_api(tmp_path, max_connections=2, idle_timeout_s=20, read_timeout_s=30) as api:
        start = trio.current_time()
        # Two clients connect and say nothing: they hold both slots until their idle timeout.
        idle = [await trio.open_tcp_stream("127.0.0.1", api.port) for _ in range(2)]
        async with httpx.AsyncClient(base_url=api.url, timeout=600) as client:
            # The third waits in the listen backlog: nothing reads its request while both are open.
            response = await client.get("/ping")
            assert response.json() == {"pong": True}
            assert trio.current_time() - start == 20  # exactly when the idle pair was closed
            stats = api.server.statistics().connections
            assert (stats.limit, stats.accepted) == (2, 3)
            for stream in idle:
                assert await until_closed(stream) == b""
                await stream.aclose()
            # Freed slots serve at once again.
            now = trio.current_time()
            assert (await client.get("/ping")).status_code == 200
            assert trio.current_time() == now


def exhaust_descriptors() -> tuple[list[int], tuple[int, int]]:
    """Take every free descriptor (below a lowered soft limit); returns them and the limits to restore."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, limits[1]))
    taken: list[int] = []
    try:
        while True:
            taken.append(os.dup(0))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    return taken, limits


async def test_accept_failures_at_the_descriptor_limit_are_logged_once_a_minute(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with offline_api(tmp_path) as api:
        waiting = socket.socket()
        taken, limits = exhaust_descriptors()
        try:
            waiting.connect(("127.0.0.1", api.port))  # into the backlog; accepting it needs a descriptor
            await trio.sleep(125)  # accept fails every 0.1 s: about 1250 times
        finally:
            for fd in taken:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        served_from = trio.current_time()
        failures = api.server.statistics().connections.accept_errors
        assert failures >= 1000
        assert not [r for r in caplog.records if r.name == "trio.serve_listeners"]
        logged = [r for r in caplog.records if r.getMessage().startswith("accepting HTTP connections fails")]
        assert len(logged) == 3  # at 0, 60 and 120 s
        assert [r.error for r in logged] == ["EMFILE"] * 3  # type: ignore[attr-defined]
        counted = [r.failures_not_logged for r in logged]  # type: ignore[attr-defined]
        # Each line counts the failures since the one before (a minute of retries every 0.1 s).
        assert counted[0] == 0 and all(590 <= n <= 600 for n in counted[1:]), counted
        # Descriptors back: the waiting client is served.
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(waiting))
        await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"pong":true}\n'):
            answer += await stream.receive_some(65536)
        assert trio.current_time() - served_from <= ACCEPT_RETRY_S  # at the next try
        await stream.aclose()


async def test_a_slow_stored_query_is_cut_at_its_deadline_with_retry_after(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with offline_api(tmp_path, trades=200_000, query_timeout_s=9) as api:
        params = {
            "exchange": "bybit",
            "symbol": "BTC-USDT",
            "interval": "1m",
            "since": str(BASE_TS // 1000),
            "until": str(BASE_TS // 1000 + 110 * 60_000),
            "footprint": "true",
        }
        async with httpx.AsyncClient(base_url=api.url, timeout=600) as client:
            start = trio.current_time()
            response = await client.get("/order-flow", params=params)
            # The SQLite scan takes real time, during which virtual time runs to the deadline.
            assert trio.current_time() - start == 9
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "9"
            body = response.json()
            assert body["error"] == "query_timeout"
            assert "http.query_timeout_s" in body["detail"]
            metrics = (await client.get("/metrics")).text
            assert "marketflow_storage_queries_timed_out_total 1.0" in metrics
            assert "marketflow_storage_queries_running 0.0" in metrics
        # The MCP tool runs the same query, under the same deadline.
        args = OrderFlowArgs(
            "bybit", "BTC-USDT", since=params["since"], until=params["until"], footprint=True
        )
        start = trio.current_time()
        with pytest.raises(QueryError) as raised:
            await TOOLS["get_order_flow"].run(api.ctx, args)
        assert trio.current_time() - start == 9
        assert (raised.value.code, raised.value.status, raised.value.retry_after_s) == (
            "query_timeout",
            503,
            9,
        )
        stats = api.ctx.storage_gate.statistics()
        assert (stats.running, stats.waiting, stats.timed_out) == (0, 0, 2)
        # With the clock stopped (no deadline can pass) a narrow range is answered.
        autojump_clock.autojump_threshold = math.inf
        result = await queries.order_flow(api.ctx, "bybit", "BTC-USDT", "1m", BASE_TS, BASE_TS + 2 * MINUTE)
        assert [bar["trades"] for bar in result["bars"]] == [2000, 2000]


async def wait_until(condition: Any) -> None:
    for _ in range(10_000):  # a bound that virtual time cannot give: it stands still meanwhile
        if condition():
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError("condition not reached")


async def test_the_gate_runs_a_few_queues_as_many_and_refuses_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = StorageQueryGate(limit=1, timeout_s=10)
    outcomes: dict[str, tuple[str, float]] = {}

    async def query(name: str, work: trio.Event | None) -> None:
        async def compute() -> str:
            if work is not None:
                await work.wait()
            return "ok"

        try:
            outcomes[name] = (await gate.run(compute), trio.current_time())
        except StorageQueryRefused as exc:
            assert exc.retry_after_s == 10
            outcomes[name] = (exc.code, trio.current_time())

    with trio.fail_after(100):  # virtual seconds: without deadlines the slow query never ends
        async with trio.open_nursery() as nursery:
            nursery.start_soon(query, "slow", trio.Event())  # never done: cut at its deadline
            await wait_until(lambda: gate.statistics().running == 1)
            nursery.start_soon(query, "queued", None)
            await wait_until(lambda: gate.statistics().waiting == 1)
            nursery.start_soon(query, "refused", None)
            await wait_until(lambda: "refused" in outcomes)
    await query("after", None)
    assert outcomes == {
        "refused": ("busy", 0),  # one running, one waiting: the queue is full
        "slow": ("query_timeout", 10),
        "queued": ("busy", 10),  # its deadline came before a slot did
        "after": ("ok", 10),
    }
    stats = gate.statistics()
    assert (stats.refused, stats.timed_out, stats.running, stats.waiting) == (1, 2, 0, 0)


async def test_run_raises_the_soft_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = 512
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to raise")
    sim = SimServer(SimConfig(seed=21, rate=20))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = tmp_path / "marketflow.toml"
            config.write_text(
                f'[http]\nlisten = "127.0.0.1:0"\n[daemon]\nstate_dir = "{tmp_path}"\nlog_format = "json"\n'
                f'[storage]\nurl = "sqlite:///{tmp_path}/mf.db"\n'
                f'[[feeds]]\nexchange = "bybit"\nmarket = "linear"\nsymbols = ["BTCUSDT"]\n'
                f'ws_url = "{sim.bybit_ws_url("linear")}"\n'
            )
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "marketflow", "run", "--config", str(config)],
                cwd=tmp_path,
                env={**os.environ, "MARKETFLOW_STORAGE_URL": ""},
                stderr=subprocess.PIPE,
                # As a shell or an init system with a low default would start it.
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
            )
            assert proc.stderr is not None
            logs = ""
            while '"msg": "HTTP API listening"' not in logs:
                logs += (await proc.stderr.receive_some(65536)).decode()
            limits = await trio.Path(f"/proc/{proc.pid}/limits").read_text()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    soft_now, hard_now = line.split()[3:5]
    assert soft_now == hard_now == ("unlimited" if hard == resource.RLIM_INFINITY else str(hard))
    assert f'"msg": "open-files limit raised", "from": {low}' in logs
