"""Every child of a running daemon, crashed by fault injection, comes back as a fresh actor and works.

The fault is `Supervisor.fail_child`: the child's actor is cancelled where it waits and its end is a
failure, so what follows is the supervisor's real restart path (circuit, backoff, the child's factory).
Each check then asks the daemon to do that child's job again, against the simulator.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from marketflow.api.server import HttpServer
from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.model import GapRecord, now_us
from marketflow.pipeline.bookkeeper import BookSnapshotRow
from marketflow.runtime.supervisor import ChildStatistics
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.http import HttpRequest, HttpResponse
from tests.conftest import wait_for

NATIVES = ("BTCUSDT", "ETHUSDT")


class InjectedFault(Exception):
    """The failure a test injects into a child."""


def config_for(tmp_path: Path, sim: SimServer) -> Config:
    base = default_config(env={})
    feeds = (
        FeedConfig(
            exchange="bybit",
            market="spot",
            symbols=("BTC-USDT", "ETH-USDT"),
            channels=("trades", "book"),
            book_depth=50,
            ws_url=sim.bybit_ws_url("spot"),
            rest_url=sim.http_url,
            stale_timeout_s=3.0,
        ),
        FeedConfig(
            exchange="binance",
            market="spot",
            symbols=("BTC-USDT", "ETH-USDT"),
            channels=("trades", "book"),
            ws_url=sim.binance_ws_base("spot"),
            rest_url=sim.binance_rest_base("spot"),
            stale_timeout_s=3.0,
        ),
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/mf.db", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        analytics=attrs.evolve(base.analytics, candle_intervals=("1s",)),
        capture=attrs.evolve(base.capture, enabled=True),
        feeds=feeds,
    )


def child(daemon: Daemon, name: str) -> ChildStatistics:
    return next(c for c in daemon.supervisor.statistics().children if c.name == name)


async def crash(daemon: Daemon, name: str) -> object:
    """Fail the child's actor; return once a fresh one runs. Returns the crashed actor."""
    before = child(daemon, name)
    assert before.state == "running", before
    old = daemon.actors[name]
    daemon.supervisor.fail_child(name, InjectedFault(f"{name} crashed by the test"))
    await wait_for(lambda: child(daemon, name).restarts == before.restarts + 1, 0.01)
    await wait_for(lambda: child(daemon, name).state == "running", 0.01)
    after = child(daemon, name)
    assert after.failures == before.failures + 1
    assert after.last_error == f"InjectedFault: {name} crashed by the test"
    assert daemon.actors[name] is not old, "the factory must build a fresh actor"
    return old


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        value: int = conn.execute(sql).fetchone()[0]
        return value
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


def trades_stored(db: Path) -> int:
    return count(db, "SELECT COUNT(*) FROM trades")


def binance_ids(db: Path, symbol: str) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id FROM trades WHERE exchange = 'binance' AND symbol = ?", (symbol,)
        ).fetchall()
    finally:
        conn.close()
    return sorted(int(r[0]) for r in rows)


async def still_running(daemon: Daemon, name: str, seconds: float) -> None:
    """The restarted child stays up (an actor that returns at once would be restarted again and again)."""
    restarts = child(daemon, name).restarts
    await trio.sleep(seconds)
    assert child(daemon, name).state == "running" and child(daemon, name).restarts == restarts


async def streaming(daemon: Daemon) -> None:
    await wait_for(lambda: all(c.state == "streaming" for c in daemon.feed_counters.values()), 0.01)


def book_status(daemon: Daemon, exchange: str, symbol: str) -> str | None:
    view = daemon.books.view(exchange, symbol)
    return None if view is None else view.status


def book_id(daemon: Daemon, exchange: str, symbol: str) -> int:
    view = daemon.books.view(exchange, symbol)
    return -1 if view is None or view.last_id is None else view.last_id


async def synced(daemon: Daemon) -> None:
    for exchange in ("bybit", "binance"):
        for symbol in ("BTC-USDT", "ETH-USDT"):
            await wait_for(
                lambda e=exchange, s=symbol: (
                    (v := daemon.books.view(e, s)) is not None and v.status == "synced"
                ),
                0.01,
            )


# -- one check per child: crash it, then see it do its job ----------------------------------------------


async def check_storage(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await wait_for(lambda: trades_stored(db) > 0, 0.01)
    old = await crash(daemon, "storage")
    assert daemon.writer is not old
    stored = trades_stored(db)
    await wait_for(lambda: trades_stored(db) > stored + 20, 0.01)
    await still_running(daemon, "storage", 0.5)


async def check_gaps(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await streaming(daemon)
    await crash(daemon, "gaps")
    sim.drop_connections()  # each reconnect opens and closes gap records: the new saver must store them
    await wait_for(
        lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE reason LIKE 'disconnected%'") >= 4, 0.01
    )
    await wait_for(lambda: daemon.ledger.statistics().unsaved == 0, 0.01)


async def check_candles(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await wait_for(lambda: count(db, "SELECT COUNT(*) FROM candles") > 0, 0.01)
    await crash(daemon, "candles")
    stored = count(db, "SELECT COUNT(*) FROM candles")
    await wait_for(lambda: count(db, "SELECT COUNT(*) FROM candles") > stored + 2, 0.01)
    await still_running(daemon, "candles", 0.3)


async def check_ring(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await wait_for(lambda: daemon.ring.statistics().trades > 0, 0.01)
    crashed_at = now_us()  # before: how long the restart takes is up to the machine
    await crash(daemon, "ring")
    # The ring no longer claims what it held before the restart is complete: storage answers for it.
    complete = daemon.ring.complete_from("bybit", "BTC-USDT")
    assert complete is not None and complete >= crashed_at
    await wait_for(lambda: any(t.recv_ts > crashed_at for t in daemon.ring.recent("bybit", "BTC-USDT")), 0.01)


async def check_analytics(daemon: Daemon, sim: SimServer, db: Path) -> None:
    assert daemon.analytics is not None
    engine = daemon.analytics
    await wait_for(lambda: engine.statistics().trades > 0, 0.01)
    await crash(daemon, "analytics")
    seen = engine.statistics().trades
    await wait_for(lambda: engine.statistics().trades > seen + 20, 0.01)
    assert engine.statistics().state == "running"
    await wait_for(lambda: engine.candles("binance", "BTC-USDT", "1s", None, None) != [], 0.01)


async def check_books(daemon: Daemon, sim: SimServer, db: Path) -> None:
    """The keeper is crashed while a Binance snapshot request is under way: the new one asks again."""
    await synced(daemon)
    release = trio.Event()
    depth = sim.rest_routes["/api/v3/depth"]

    async def held_depth(request: HttpRequest) -> HttpResponse:
        await release.wait()
        return await depth(request)

    sim.add_rest_route("/api/v3/depth", held_depth)
    sim.skip_update("binance", "spot", "BTCUSDT")  # a sequence gap: the book needs a REST snapshot
    await wait_for(lambda: ("binance", "BTC-USDT") in daemon.books.fetching, 0.01)
    await crash(daemon, "books")
    release.set()
    async with httpx.AsyncClient(base_url=http_url(daemon)) as client:

        async def book_synced() -> bool:
            response = await client.get("/book/binance/BTC-USDT")
            return response.status_code == 200 and response.json().get("status") == "synced"

        while not await book_synced():  # noqa: ASYNC110 - polling the API, no event exists
            await trio.sleep(0.02)
    await synced(daemon)
    last = book_id(daemon, "binance", "BTC-USDT")
    await wait_for(lambda: book_id(daemon, "binance", "BTC-USDT") > last, 0.01)  # it keeps applying updates


async def check_backfill(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await streaming(daemon)
    await crash(daemon, "backfill")
    dropped_at = now_us()
    sim.drop_connections()  # Bybit trades are caught up over REST by the new backfiller

    def since_drop() -> list[GapRecord]:
        return [r for r in daemon.ledger.query("bybit") if r.channel == "trades" and r.start >= dropped_at]

    await wait_for(lambda: len(since_drop()) == 2 and all(r.end is not None for r in since_drop()), 0.01)
    records = since_drop()
    # The new backfiller took the catch-up and finished it (how many trades it recovers depends on how many
    # the simulator printed while the connection was down: none when the reconnect is quick).
    assert all("not backfilled" not in r.reason and "failed" not in r.reason for r in records), records
    assert daemon.backfiller.statistics().requests >= 1


async def check_normalizer(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await wait_for(lambda: trades_stored(db) > 0, 0.01)
    await crash(daemon, "normalizer")
    stored = trades_stored(db)
    await wait_for(lambda: trades_stored(db) > stored + 20, 0.01)
    await synced(daemon)


async def check_feed(daemon: Daemon, sim: SimServer, db: Path) -> None:
    await streaming(daemon)
    await crash(daemon, "binance-spot")
    await wait_for(lambda: daemon.feed_counters["binance-spot"].connects == 2, 0.01)
    await streaming(daemon)
    frames = daemon.feed_counters["binance-spot"].data_frames
    await wait_for(lambda: daemon.feed_counters["binance-spot"].data_frames > frames, 0.01)


def http_url(daemon: Daemon) -> str:
    assert daemon.http is not None and daemon.http.url is not None
    return daemon.http.url


async def check_http(daemon: Daemon, sim: SimServer, db: Path) -> None:
    async with httpx.AsyncClient(base_url=http_url(daemon)) as client:
        assert (await client.get("/ping")).status_code == 200
    old = await crash(daemon, "http")
    assert isinstance(old, HttpServer)
    with pytest.raises(RuntimeError, match="serves once"):
        await old.run()
    await still_running(daemon, "http", 0.5)
    async with httpx.AsyncClient(base_url=http_url(daemon)) as client:
        for _ in range(3):
            assert (await client.get("/ping")).status_code == 200
            await trio.sleep(0.1)
        health = (await client.get("/health")).json()
    assert health["status"] in ("healthy", "degraded")


async def check_capture(daemon: Daemon, sim: SimServer, db: Path) -> None:
    assert daemon.capture is not None
    capture = daemon.capture
    await wait_for(lambda: capture.statistics().records > 0, 0.01)
    await crash(daemon, "capture")
    records = capture.statistics().records
    await wait_for(lambda: capture.statistics().records > records + 20, 0.01)
    await still_running(daemon, "capture", 0.3)


async def check_instruments(daemon: Daemon, sim: SimServer, db: Path) -> None:
    catalog = daemon.instruments
    await wait_for(lambda: catalog.loaded("bybit", "spot") and catalog.loaded("binance", "spot"), 0.01)
    await crash(daemon, "instruments")
    loads = catalog.statistics().loads
    catalog.request_refresh()  # the new loader answers it
    await wait_for(lambda: catalog.statistics().loads > loads, 0.01)


CHECKS: dict[str, Callable[[Daemon, SimServer, Path], Awaitable[None]]] = {
    "capture": check_capture,
    "storage": check_storage,
    "gaps": check_gaps,
    "candles": check_candles,
    "ring": check_ring,
    "analytics": check_analytics,
    "books": check_books,
    "backfill": check_backfill,
    "instruments": check_instruments,
    "normalizer": check_normalizer,
    "feeds": check_feed,
    "http": check_http,
}


@pytest.mark.parametrize("name", list(CHECKS))
async def test_a_crashed_child_comes_back_and_works(tmp_path: Path, name: str) -> None:
    sim = SimServer(SimConfig(seed=61, rate=40, book_rate=20, trade_while_unsubscribed=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            await CHECKS[name](daemon, sim, tmp_path / "mf.db")
            await daemon.stop()
        nursery.cancel_scope.cancel()
    if name in ("storage", "normalizer"):
        # Nothing was lost across the restart: Binance aggregate ids are contiguous in storage.
        for symbol in ("BTC-USDT", "ETH-USDT"):
            ids = binance_ids(tmp_path / "mf.db", symbol)
            assert ids and ids == list(range(ids[0], ids[-1] + 1)), f"{symbol}: aggregate ids have holes"


async def test_a_crashed_book_snapshot_sink_comes_back_and_saves(tmp_path: Path) -> None:
    """`book_snapshots` exists in a replay daemon (the keeper must not wait there for the database)."""
    sim = SimServer(SimConfig(seed=62))
    daemon = Daemon(config_for(tmp_path, sim), replay=True)
    assert daemon.snapshot_queue is not None
    queue = daemon.snapshot_queue
    db = tmp_path / "mf.db"

    def row(ts: int) -> BookSnapshotRow:
        return BookSnapshotRow("binance", "BTC-USDT", ts, 1, [(Decimal("1.5"), Decimal("2"))], [])

    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            queue.submit([row(1)])
            await wait_for(lambda: count(db, "SELECT COUNT(*) FROM book_snapshots") == 1, 0.01)
            await crash(daemon, "book_snapshots")
            queue.submit([row(2), row(3)])
            await wait_for(lambda: count(db, "SELECT COUNT(*) FROM book_snapshots") == 3, 0.01)
            await still_running(daemon, "book_snapshots", 0.3)
            assert queue.statistics().written == 3
            await daemon.stop()
        nursery.cancel_scope.cancel()
