"""What an operator sees when feeds cannot connect: one WARNING line a failure, never a traceback.

Real feeds under a real supervisor, against 127.0.0.1 addresses that refuse, never answer, close, or
speak plain TCP to a TLS client, and a name that does not resolve; all under `autojump_clock`, so the
retry each line announces is checked against the exact virtual time of the next attempt.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
from typing import Any

import attrs
import pytest
import trio

from marketflow.exchanges import venue
from marketflow.model import RawFrames
from marketflow.pipeline.feed import CONNECT_TIMEOUT_S, Feed, FeedCounters
from marketflow.runtime import Bus, ChildSpec, Restart, Supervisor, SupervisorPolicy

POLICY = SupervisorPolicy(
    backoff_initial_s=1.0, backoff_max_s=30.0, circuit_failures=10, circuit_window_s=300, circuit_open_s=60
)
RUN_S = 900.0


class MaxRandom(random.Random):
    """Draws the jitter ceiling: backoff delays are 1, 2, 4, ... 30 s."""

    def uniform(self, a: float, b: float) -> float:
        return b


class NoSuchName(trio.abc.HostnameResolver):
    """Every `*.invalid` name (RFC 6761: never resolves) fails as a real resolver does; others pass."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None, *args: Any) -> Any:
        if host is not None and host.endswith(b".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return socket.getaddrinfo(host, port, *args)

    async def getnameinfo(self, sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


@attrs.define
class Listener:
    """A TCP server on 127.0.0.1 that misbehaves in one way; notes when each connection arrives."""

    behaviour: str
    accepted: list[float] = attrs.Factory(list)
    port: int = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted.append(trio.current_time())
        async with stream:
            if self.behaviour == "silent":
                await trio.sleep_forever()
            elif self.behaviour == "plain":  # answers a TLS ClientHello with plain HTTP
                await stream.receive_some(4096)
                await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            # "close": hang up at once

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]


class Unexpected:
    """An actor with a bug: it fails with an unexpected exception every time it starts."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise KeyError("a bug, not the network")

    def statistics(self) -> None:
        return None


class TrioTime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.trio_time = trio.current_time()
        return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def feed_spec(name: str, url: str, bus: Bus[RawFrames]) -> ChildSpec:
    def make() -> Feed:
        return Feed(
            name=name,
            exchange="bybit",
            market="spot",
            url=url,
            session_factory=lambda: venue("bybit").session("spot", ["publicTrade.BTCUSDT"]),
            bus=bus,
            counters=FeedCounters(),
            stale_timeout_s=30.0,
            ping_interval_s=20.0,
        )

    return ChildSpec(name, make, Restart.PERMANENT, shutdown_timeout_s=1.0)


def expected_tracebacks(times: list[float], interval_s: float) -> list[float]:
    """The failures that may show a traceback: the first, then the first one `interval_s` after."""
    shown: list[float] = []
    for t in times:
        if not shown or t - shown[-1] >= interval_s:
            shown.append(t)
    return shown


async def test_operational_feed_failures_are_one_line_each_and_unexpected_ones_rate_limited(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    trio.socket.set_custom_hostname_resolver(NoSuchName())
    bus: Bus[RawFrames] = Bus("raw")
    silent, close, plain = Listener("silent"), Listener("close"), Listener("plain")
    stamp = TrioTime()
    caplog.handler.addFilter(stamp)
    with caplog.at_level(logging.INFO, logger="marketflow"):
        async with trio.open_nursery() as nursery:
            for listener in (silent, close, plain):
                await listener.start(nursery)
            refused = closed_port()
            urls = {
                "refused": f"ws://127.0.0.1:{refused}/v5/public/spot",
                "dns": "wss://stream.exchange.invalid/v5/public/spot",
                "timeout": f"ws://127.0.0.1:{silent.port}/v5/public/spot",
                "closed": f"ws://127.0.0.1:{close.port}/v5/public/spot",
                "tls": f"wss://127.0.0.1:{plain.port}/v5/public/spot",
            }
            specs = [feed_spec(name, url, bus) for name, url in urls.items()]
            specs += [ChildSpec(name, Unexpected, Restart.PERMANENT) for name in ("buggy", "buggy-too")]
            sup = Supervisor("daemon", POLICY, specs, rng=MaxRandom())
            await nursery.start(sup.run)
            await trio.sleep_until(RUN_S)
            stats = {child.name: child for child in sup.statistics().children}
            await sup.stop()
            nursery.cancel_scope.cancel()
    caplog.handler.removeFilter(stamp)

    mine = [r for r in caplog.records if r.name == "marketflow.supervisor"]
    reasons = {
        "refused": f"cannot connect: all attempts to connect to 127.0.0.1:{refused} failed: "
        "Connection refused",
        "dns": "cannot connect: [Errno -2] Name or service not known",
        "timeout": f"connect timed out after {CONNECT_TIMEOUT_S} s",
        "closed": "connection closed during the handshake",
        "tls": "handshake failed: SSLError",
    }
    for name, url in urls.items():
        lines = [r for r in mine if getattr(r, "child", None) == name]
        # One line per failure, each a WARNING naming feed, URL, reason and next retry; no traceback.
        assert stats[name].failures >= 10, (name, stats[name])
        assert len(lines) == stats[name].failures, name
        for line in lines:
            assert (line.levelno, line.getMessage(), line.exc_info) == (
                logging.WARNING,
                "child failed; restarting",
                None,
            )
            assert line.url == url  # type: ignore[attr-defined]
            assert line.reason.startswith(reasons[name]), (name, line.reason)  # type: ignore[attr-defined]
            assert line.retry_in_s > 0  # type: ignore[attr-defined]
        assert "Traceback" not in "\n".join(caplog.handler.format(line) for line in lines)

    # The retry each line announces is when the next attempt comes (exact virtual times).
    for listener, name in ((silent, "timeout"), (close, "closed"), (plain, "tls")):
        lines = [r for r in mine if getattr(r, "child", None) == name]
        failed_at = [r.trio_time for r in lines]  # type: ignore[attr-defined]
        announced = [r.trio_time + r.retry_in_s for r in lines]  # type: ignore[attr-defined]
        assert listener.accepted[1:] == pytest.approx(announced[: len(listener.accepted) - 1], abs=1e-3)
        if name == "timeout":
            assert [f - a for f, a in zip(failed_at, listener.accepted, strict=False)] == pytest.approx(
                [CONNECT_TIMEOUT_S] * len(failed_at)
            )

    # A bug keeps its traceback, at most once per child per traceback_interval_s (300 s): each of two
    # children failing alike has its own.
    for name in ("buggy", "buggy-too"):
        buggy = [r for r in mine if getattr(r, "child", None) == name]
        assert len(buggy) == stats[name].failures >= 10
        times = [r.trio_time for r in buggy]  # type: ignore[attr-defined]
        shown = [r.trio_time for r in buggy if r.exc_info is not None]  # type: ignore[attr-defined]
        assert shown == expected_tracebacks(times, POLICY.traceback_interval_s)
        assert len(shown) == 3  # t = 0, then the first failure at or after 300 s, then after 600 s
        assert all(r.exc_info[0] is KeyError for r in buggy if r.exc_info)
        assert all(r.traceback == "shown at most once per 300 s" for r in buggy if not r.exc_info)  # type: ignore[attr-defined]
