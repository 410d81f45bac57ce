"""Books and trades from both exchanges against the simulator, with every book fault and a forced disconnect.

Checks that only the faulty symbol resyncs, that books equal the simulator's true book after recovery,
that the gap ledger holds each gap, and that stored Binance aggregate ids are contiguous after a disconnect.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from tests.conftest import wait_for

NATIVES = ("BTCUSDT", "ETHUSDT")
MARKETS = (("bybit", "spot"), ("bybit", "linear"), ("binance", "spot"), ("binance", "usdm"))
PERPETUAL = {"spot": False, "linear": True, "usdm": True}


def normalized(native: str, market: str) -> str:
    return native.removesuffix("USDT") + "-USDT" + ("-PERP" if PERPETUAL[market] else "")


def config_for(tmp_path: Path, sim: SimServer, markets: tuple[tuple[str, str], ...] = MARKETS) -> Config:
    base = default_config(env={})
    feeds = []
    for exchange, market in markets:
        ws = sim.bybit_ws_url(market) if exchange == "bybit" else sim.binance_ws_base(market)
        rest = sim.http_url if exchange == "bybit" else sim.binance_rest_base(market)
        feeds.append(
            FeedConfig(
                exchange=exchange,
                market=market,
                symbols=tuple(normalized(n, market) for n in NATIVES),
                channels=("trades", "book"),
                book_depth=50,
                ws_url=ws,
                rest_url=rest,
                stale_timeout_s=3.0,
            )
        )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/mf.db", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        feeds=tuple(feeds),
    )


def as_strings(levels: list[tuple[object, object]]) -> list[tuple[str, str]]:
    return [(str(p), str(q)) for p, q in levels]


def matches_truth(
    daemon: Daemon, sim: SimServer, exchange: str, market: str, native: str, depth: int = 50
) -> bool:
    view = daemon.books.view(exchange, normalized(native, market), depth)
    if view is None or view.status != "synced":
        return False
    bids, asks, _ = sim.true_book(exchange, market, native, depth)
    return as_strings(view.bids) == bids and as_strings(view.asks) == asks


async def all_match(daemon: Daemon, sim: SimServer, markets: tuple[tuple[str, str], ...] = MARKETS) -> None:
    for exchange, market in markets:
        for native in NATIVES:
            await wait_for(lambda e=exchange, m=market, n=native: matches_truth(daemon, sim, e, m, n), 0.01)


def book_gaps(daemon: Daemon) -> dict[str, int]:
    return {key: stats.gaps for key, stats in daemon.books.statistics().books.items()}


def updates_applied(daemon: Daemon) -> dict[str, int]:
    return {key: stats.updates_applied for key, stats in daemon.books.statistics().books.items()}


async def run_with(
    tmp_path: Path,
    sim_config: SimConfig,
    body: Callable[[Daemon, SimServer], object],
    markets: tuple[tuple[str, str], ...] = MARKETS,
) -> Daemon:
    sim = SimServer(sim_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim, markets))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            await body(daemon, sim)  # type: ignore[misc]
            await daemon.stop()
        nursery.cancel_scope.cancel()
    return daemon


async def test_books_of_both_exchanges_equal_the_true_books(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        await all_match(daemon, sim)
        # A second of live deltas (20/s) on every book, checked on every update.
        applied = updates_applied(daemon)
        await wait_for(lambda: all(n >= applied[k] + 20 for k, n in updates_applied(daemon).items()), 0.01)
        await all_match(daemon, sim)
        assert set(book_gaps(daemon).values()) == {0}  # no false gap on continuous streams (USD-M U included)

    await run_with(tmp_path, SimConfig(seed=41, rate=20, book_rate=20), body)


async def test_each_book_fault_resyncs_only_its_symbol(tmp_path: Path) -> None:
    skipped = ("update id jumped", "previous update id", "first event after snapshot")
    faults = [
        ("binance", "spot", "skip", skipped),
        ("binance", "usdm", "skip", skipped),
        ("bybit", "linear", "skip", skipped),
        ("bybit", "spot", "cross", ("crossed book",)),
        ("binance", "usdm", "cross", ("crossed book",)),
    ]

    async def body(daemon: Daemon, sim: SimServer) -> None:
        await all_match(daemon, sim)
        for exchange, market, kind, reason in faults:  # reason: what the record's reason starts with
            symbol = normalized("BTCUSDT", market)
            before = book_gaps(daemon)
            (sim.skip_update if kind == "skip" else sim.cross_book)(exchange, market, "BTCUSDT")
            key = f"{exchange}:{symbol}"
            await wait_for(lambda k=key, b=before: book_gaps(daemon)[k] > b[k], 0.01)
            after = book_gaps(daemon)
            assert {k: v for k, v in after.items() if v != before[k]} == {key: before[key] + 1}
            await all_match(daemon, sim)
            records = [r for r in daemon.ledger.query(exchange, symbol) if r.channel == "book"]
            assert records and records[0].reason.startswith(reason) and records[0].end is not None
        # A Binance snapshot older than the buffered events is fetched again, and the book still recovers.
        sim.stale_snapshot("binance", "spot", "ETHUSDT", updates_back=50)
        sim.skip_update("binance", "spot", "ETHUSDT")
        await wait_for(
            lambda: daemon.books.statistics().books["binance:ETH-USDT"].snapshots_too_old >= 1, 0.01
        )
        # Bybit restarting its service (u == 1) is a snapshot, not a gap.
        gaps = book_gaps(daemon)["bybit:ETH-USDT-PERP"]
        snapshots = daemon.books.statistics().books["bybit:ETH-USDT-PERP"].snapshots
        sim.bybit_restart("linear", "ETHUSDT")
        await wait_for(  # the restart's snapshot has been applied
            lambda: daemon.books.statistics().books["bybit:ETH-USDT-PERP"].snapshots > snapshots, 0.01
        )
        await all_match(daemon, sim)
        assert book_gaps(daemon)["bybit:ETH-USDT-PERP"] == gaps

    await run_with(tmp_path, SimConfig(seed=42, rate=20, book_rate=20), body)


def stored_ids(db: Path, exchange: str, symbol: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id FROM trades WHERE exchange = ? AND symbol = ?", (exchange, symbol)
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


async def test_disconnect_is_backfilled_and_recorded(tmp_path: Path) -> None:
    db = tmp_path / "mf.db"

    def binance_stored_past(last_ids: dict[tuple[str, str], int]) -> bool:
        """Every Binance market's stored aggregate ids run without a hole past `last_ids`."""
        for (market, native), last in last_ids.items():
            ids = sorted(int(i) for i in stored_ids(db, "binance", normalized(native, market)))
            if not ids or ids != list(range(ids[0], ids[-1] + 1)) or ids[-1] < last:
                return False
        return True

    def recovered_on_both(daemon: Daemon) -> bool:
        recovered = {r.exchange for r in daemon.ledger.query() if r.channel == "trades" and r.recovered > 0}
        return recovered == {"binance", "bybit"}

    async def body(daemon: Daemon, sim: SimServer) -> None:
        await wait_for(lambda: all(c.state == "streaming" for c in daemon.feed_counters.values()), 0.01)
        await wait_for(lambda: len(stored_ids(db, "binance", "BTC-USDT")) >= 10, 0.02)  # trades stored
        sim.drop_connections()
        await wait_for(
            lambda: all(c.connects >= 2 and c.state == "streaming" for c in daemon.feed_counters.values()),
            0.01,
        )
        # Trades generated while nobody was connected end up stored: ids contiguous across the
        # disconnect, up to what the tapes had generated by the reconnect.
        reconnected = {
            (market, native): sim.generated_trades("binance", market, native)[-1].id
            for market in ("spot", "usdm")
            for native in NATIVES
        }
        last_ids = {key: int(value) for key, value in reconnected.items()}
        await wait_for(lambda: binance_stored_past(last_ids) and recovered_on_both(daemon), 0.05)

    daemon = await run_with(
        tmp_path, SimConfig(seed=43, rate=50, book_rate=10, trade_while_unsubscribed=True), body
    )
    for market in ("spot", "usdm"):
        for native in NATIVES:
            ids = sorted(int(i) for i in stored_ids(db, "binance", normalized(native, market)))
            assert ids == list(range(ids[0], ids[-1] + 1)), f"{market} {native}: aggregate ids have holes"
    recovered = [r for r in daemon.ledger.query() if r.channel == "trades" and r.recovered > 0]
    assert {r.exchange for r in recovered} == {"binance", "bybit"}
    assert any("aggregate trade ids" in r.reason for r in recovered)
    disconnects = [r for r in daemon.ledger.query() if r.reason.startswith("disconnected")]
    assert {(r.exchange, r.channel) for r in disconnects} >= {
        ("bybit", "book"),
        ("bybit", "trades"),
        ("binance", "book"),
        ("binance", "trades"),
    }


async def test_server_shutdown_is_met_with_a_replacement_first(tmp_path: Path) -> None:
    binance_only = (("binance", "spot"), ("binance", "usdm"))

    async def body(daemon: Daemon, sim: SimServer) -> None:
        await all_match(daemon, sim, binance_only)
        assert sim.server_shutdown(close_after_s=0.5) == 3  # spot, usdm /market, usdm /public
        await wait_for(lambda: all(c.rotations == 1 for c in daemon.feed_counters.values()), 0.01)
        await wait_for(lambda: sim.connections == 3, 0.01)  # the old ones are gone; replacements carry on
        await all_match(daemon, sim, binance_only)

    daemon = await run_with(tmp_path, SimConfig(seed=44, rate=50, book_rate=20), body, binance_only)
    assert all(c.disconnects == 0 and c.connects == 2 for c in daemon.feed_counters.values())
    assert set(book_gaps(daemon).values()) == {0}  # the overlap was de-duplicated, not taken for a gap
    assert daemon.ledger.query() == []
    db = tmp_path / "mf.db"
    for market in ("spot", "usdm"):
        for native in NATIVES:
            ids = sorted(int(i) for i in stored_ids(db, "binance", normalized(native, market)))
            assert ids == list(range(ids[0], ids[-1] + 1))


def table(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def stored_rounds(db: Path) -> set[tuple[object, ...]]:
    """(exchange, symbol) of the markets with at least two stored book snapshot rounds."""
    rows = table(
        db, "SELECT exchange, symbol FROM book_snapshots GROUP BY exchange, symbol HAVING COUNT(*) >= 2"
    )
    return set(rows)


async def test_gaps_book_snapshots_and_candles_are_stored(tmp_path: Path) -> None:
    from marketflow.config import AnalyticsConfig, BooksConfig

    sim = SimServer(SimConfig(seed=45, rate=50, book_rate=20))
    markets = (("bybit", "linear"), ("binance", "spot"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = attrs.evolve(
            config_for(tmp_path, sim, markets),
            books=BooksConfig(snapshot_interval_s=0.2, snapshot_depth=5),
            analytics=AnalyticsConfig(candle_intervals=("1s",)),
        )
        daemon = Daemon(config)
        db = tmp_path / "mf.db"
        await nursery.start(daemon.run)
        with trio.fail_after(30):
            await all_match(daemon, sim, markets)
            sim.skip_update("binance", "spot", "ETHUSDT")
            await wait_for(
                lambda: any(r.end is not None for r in daemon.ledger.query("binance", "ETH-USDT")), 0.01
            )
            # Until a few closed 1 s candles and book snapshot rounds of both markets are stored.
            await wait_for(
                lambda: stored_rounds(db) >= {("bybit", "BTC-USDT-PERP"), ("binance", "BTC-USDT")}, 0.05
            )
            await wait_for(lambda: len(table(db, "SELECT 1 FROM candles")) >= 3, 0.05)
            await daemon.stop()
        nursery.cancel_scope.cancel()
    gaps = table(db, 'SELECT exchange, symbol, channel, "end" IS NOT NULL, reason FROM gaps')
    assert ("binance", "ETH-USDT", "book", 1) in [g[:4] for g in gaps]
    snapshots = table(db, "SELECT exchange, symbol, depth, bids, asks FROM book_snapshots")
    assert {(s[0], s[1]) for s in snapshots} >= {("bybit", "BTC-USDT-PERP"), ("binance", "BTC-USDT")}
    exchange, symbol, depth, bids, asks = snapshots[-1]
    assert depth == 5 and len(json.loads(str(bids))) == 5 and len(json.loads(str(asks))) == 5
    candles = table(db, "SELECT exchange, symbol, interval, trades, open, vwap FROM candles")
    assert candles and {c[2] for c in candles} == {"1s"}
    # Exact decimals stored as the exchange wrote them (no float artefacts).
    assert all("e" not in str(c[4]).lower() for c in candles)
