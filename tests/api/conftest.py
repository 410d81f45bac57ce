"""A real daemon fed by the in-process simulator, its trade ring, and the HTTP server on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from quart_trio import QuartTrio

from marketflow.api.app import create_app
from marketflow.api.keys import KeyStore, key_store_path
from marketflow.api.queries import QueryContext
from marketflow.api.ring import TradeRing
from marketflow.api.server import HttpServer
from marketflow.daemon import Daemon
from marketflow.runtime.bus import Overflow
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config, wait_for


@attrs.define
class Api:
    url: str
    daemon: Daemon
    ctx: QueryContext
    ring: TradeRing
    server: HttpServer
    sim: SimServer
    keys: KeyStore

    def client(self, key: str | None = None, *, bearer: bool = False) -> httpx.AsyncClient:
        headers = {}
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    async def wait_trades(self, n: int = 1) -> None:
        """Until the ring holds at least `n` trades and storage wrote some."""
        await wait_for(lambda: self.ring.statistics().held >= n)


@asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    listen: str = "127.0.0.1:0",
    public_reads: bool = False,
    rate: float = 50,
    book: bool = False,
    markets: tuple[str, ...] = ("spot", "linear"),
    seed: int = 21,
    setup: Callable[[QuartTrio], None] | None = None,
    http: Mapping[str, Any] | None = None,
    channels: Mapping[str, tuple[str, ...]] | None = None,
    sim_config_: SimConfig | None = None,
) -> AsyncIterator[Api]:
    """Simulator, daemon, trade ring and HTTP server; `setup` may add routes to the app before it serves.

    `http`: more `[http]` settings (`allowed_hosts`, `api_docs`, ...). `channels`: per market, the feed's
    channels (instead of trades, or trades and book).
    """
    sim = SimServer(sim_config_ or SimConfig(seed=seed, rate=rate))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = sim_config(tmp_path, sim, markets=markets, flush_interval_s=0.05)
        feeds = config.feeds
        if book:
            feeds = tuple(attrs.evolve(f, channels=("trades", "book")) for f in feeds)
        if channels is not None:
            feeds = tuple(attrs.evolve(f, channels=channels[f.market]) for f in feeds)
        config = attrs.evolve(
            config,
            feeds=feeds,
            http=attrs.evolve(
                config.http, listen=listen, public_reads=public_reads, trades_ring=500, **(http or {})
            ),
        )
        daemon = Daemon(config)
        ring = getattr(daemon, "ring", None)
        if not isinstance(ring, TradeRing):
            ring = TradeRing(
                daemon.trade_bus.subscribe("api-ring", 64, Overflow.DROP_OLDEST), config.http.trades_ring
            )
            nursery.start_soon(ring.run)
        ctx = QueryContext(daemon, ring, getattr(daemon, "analytics", None))
        await nursery.start(daemon.run)
        app = create_app(ctx)
        if setup is not None:
            setup(app)
        server = HttpServer(ctx, config, app=app)
        await nursery.start(server.run)
        assert server.port and server.url
        url = f"http://127.0.0.1:{server.port}"
        yield Api(url, daemon, ctx, ring, server, sim, KeyStore(key_store_path(config.daemon.state_dir)))
        server.request_stop()
        with trio.move_on_after(5):
            await daemon.stop()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """Loopback listener, reads open: the common case."""
    async with running_api(tmp_path) as running:
        await running.wait_trades(5)
        yield running
