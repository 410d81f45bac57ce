"""OKX through the whole daemon, against the simulator: trades, books (checksum and seqId chain), a dropped
connection backfilled by trade id, and contract units in /markets.

Real sockets on 127.0.0.1; every wait is bounded by `trio.fail_after` and waits on a condition.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import httpx
import trio

from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.sim import Faults, SimConfig, SimServer
from marketflow.sim.market import SimTrade
from tests.conftest import wait_for

FEEDS = {
    "spot": ("BTC-USDT", "ETH-USDT"),
    "swap": ("BTC-USDT-PERP", "BTC-USD-PERP"),
}
NATIVE = {
    "BTC-USDT": "BTC-USDT",
    "ETH-USDT": "ETH-USDT",
    "BTC-USDT-PERP": "BTC-USDT-SWAP",
    "BTC-USD-PERP": "BTC-USD-SWAP",
}


def config_for(tmp_path: Path, sim: SimServer, channels: tuple[str, ...] = ("trades", "book")) -> Config:
    base = default_config(env={})
    feeds = tuple(
        FeedConfig(
            exchange="okx",
            market=market,
            symbols=symbols,
            channels=channels,
            book_depth=400,
            ws_url=sim.okx_ws_url(),
            rest_url=sim.http_url,
            stale_timeout_s=3.0,
        )
        for market, symbols in FEEDS.items()
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0", public_reads=True),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/mf.db", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        feeds=feeds,
    )


def stored(tmp_path: Path, symbol: str) -> list[tuple[str, str, str, str]]:
    conn = sqlite3.connect(tmp_path / "mf.db")
    try:
        return conn.execute(
            "SELECT id, price, amount, side FROM trades WHERE exchange = 'okx' AND symbol = ?", (symbol,)
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def stored_ids(tmp_path: Path, symbol: str) -> list[str]:
    return [row[0] for row in stored(tmp_path, symbol)]


async def run_with(
    tmp_path: Path,
    sim_config: SimConfig,
    body: Callable[[Daemon, SimServer], Awaitable[None]],
    channels: tuple[str, ...] = ("trades", "book"),
) -> None:
    sim = SimServer(sim_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim, channels))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            await body(daemon, sim)
            await daemon.stop()
        nursery.cancel_scope.cancel()


def synced(daemon: Daemon, symbol: str) -> bool:
    view = daemon.books.view("okx", symbol, 25)
    return view is not None and view.status == "synced" and bool(view.bids) and bool(view.asks)


def matches_truth(daemon: Daemon, sim: SimServer, market: str, symbol: str, native: str) -> bool:
    view = daemon.books.view("okx", symbol, 25)
    if view is None or view.status != "synced":
        return False
    bids, asks, _ = sim.true_book("okx", market, native, 25)
    got = ([(str(p), str(q)) for p, q in view.bids], [(str(p), str(q)) for p, q in view.asks])
    return got == (bids, asks)


def fills_by_id(truth: list[SimTrade]) -> dict[int, SimTrade]:
    """Every fill id of the simulator's taker orders → its order (`seq`..`last_seq` are its fills)."""
    return {fill: order for order in truth for fill in range(order.seq, order.last_seq + 1)}


def covered_fills(tmp_path: Path, sim: SimServer, symbol: str, native: str) -> list[int]:
    """The fill ids the stored trades of `symbol` cover (a live trade covers its whole taker order)."""
    fills = fills_by_id(sim.generated_trades("okx", "swap", native))
    covered: list[int] = []
    for trade_id, price, amount, side in stored(tmp_path, symbol):
        number = int(trade_id)
        order = fills[number]
        if number == order.last_seq and amount == order.size:
            covered += range(order.seq, order.last_seq + 1)  # a live trade: the whole taker order
        else:
            covered.append(number)  # a backfilled fill
            assert (price, side) == (order.price, order.side.lower())
    return covered


def contiguous(covered: list[int]) -> bool:
    return sorted(covered) == list(range(min(covered), max(covered) + 1))


async def test_trades_are_stored_exactly_with_taker_sides(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        for symbol in NATIVE:
            await wait_for(lambda s=symbol: len(stored(tmp_path, s)) >= 20)
        for symbol, native in NATIVE.items():
            market = "spot" if symbol.count("-") == 1 else "swap"
            truth = {t.last_seq: t for t in sim.generated_trades("okx", market, native)}
            for trade_id, price, amount, side in stored(tmp_path, symbol):
                order = truth[int(trade_id)]  # a live trade's id is its order's last fill id
                assert (price, amount, side) == (order.price, order.size, order.side.lower()), symbol
        # The latest trade pushed at each subscription was not stored twice.
        assert all(len(set(stored_ids(tmp_path, s))) == len(stored_ids(tmp_path, s)) for s in NATIVE)

    await run_with(tmp_path, SimConfig(seed=5, rate=40.0, book_rate=20.0), body, ("trades",))


def book_gaps(daemon: Daemon) -> dict[str, int]:
    return {key: stats.gaps for key, stats in daemon.books.statistics().books.items()}


def gap_rows(daemon: Daemon, symbol: str, channel: str) -> list[tuple[str, int | None, int]]:
    return [
        (r.reason, r.end, r.recovered) for r in daemon.ledger.query("okx", symbol) if r.channel == channel
    ]


async def test_wrong_checksum_and_chain_break_resync_that_book_only(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        for symbol in NATIVE:
            await wait_for(lambda s=symbol: synced(daemon, s))
        # A keep-alive and a sequence reset after maintenance are no gaps.
        eth = sim.book_feed("okx", "spot", "ETH-USDT").streams["books:ETH-USDT"]
        perp = sim.book_feed("okx", "swap", "BTC-USDT-SWAP").book
        sim.okx_keepalive("spot", "ETH-USDT")
        sim.okx_reset("swap", "BTC-USDT-SWAP")
        await wait_for(lambda: eth.keepalives >= 1 and not perp.restart_next)  # type: ignore[attr-defined]
        applied = daemon.books.statistics().books["okx:BTC-USDT-PERP"].updates_applied
        await wait_for(
            lambda: daemon.books.statistics().books["okx:BTC-USDT-PERP"].updates_applied > applied + 3
        )
        sim.okx_bad_checksum("spot", "BTC-USDT")
        await wait_for(lambda: book_gaps(daemon)["okx:BTC-USDT"] == 1)
        sim.skip_update("okx", "swap", "BTC-USD-SWAP")
        await wait_for(lambda: book_gaps(daemon)["okx:BTC-USD-PERP"] == 1)
        # Each comes back (resubscribed alone, a fresh snapshot), and its gap row is closed.
        for symbol in ("BTC-USDT", "BTC-USD-PERP"):
            await wait_for(
                lambda s=symbol: synced(daemon, s) and all(r[1] for r in gap_rows(daemon, s, "book"))
            )
        (checksum_gap,) = gap_rows(daemon, "BTC-USDT", "book")
        assert checksum_gap[0].startswith("checksum ")
        (chain_gap,) = gap_rows(daemon, "BTC-USD-PERP", "book")
        assert chain_gap[0].startswith("prevSeqId ")
        assert book_gaps(daemon)["okx:ETH-USDT"] == 0 and book_gaps(daemon)["okx:BTC-USDT-PERP"] == 0
        assert gap_rows(daemon, "ETH-USDT", "book") == [] and gap_rows(daemon, "BTC-USDT-PERP", "book") == []
        assert daemon.books.statistics().resubscribes == 2
        # The resynced books equal the simulator's book again.
        await wait_for(lambda: matches_truth(daemon, sim, "spot", "BTC-USDT", "BTC-USDT"))
        await wait_for(lambda: matches_truth(daemon, sim, "swap", "BTC-USD-PERP", "BTC-USD-SWAP"))

    await run_with(tmp_path, SimConfig(seed=6, rate=10.0, book_rate=20.0), body, ("book",))


async def test_books_without_a_ws_snapshot_sync_from_rest_and_recover_a_gap(tmp_path: Path) -> None:
    # OKX's changelog ("Delist initial snapshot and checksum field in order book channels") announces that
    # `books` will stop sending its initial snapshot: each book then comes from `/api/v5/market/books`,
    # aligned with the stream by seqId, and a chain break is recovered the same way after the resubscribe.
    async def body(daemon: Daemon, sim: SimServer) -> None:
        for symbol in NATIVE:
            await wait_for(lambda s=symbol: synced(daemon, s))
        stats = daemon.books.statistics()
        assert stats.snapshot_requests >= len(NATIVE) and stats.resubscribes == 0
        await wait_for(lambda: matches_truth(daemon, sim, "spot", "ETH-USDT", "ETH-USDT"))
        sim.skip_update("okx", "swap", "BTC-USD-SWAP")
        await wait_for(lambda: book_gaps(daemon)["okx:BTC-USD-PERP"] == 1)
        await wait_for(
            lambda: (
                synced(daemon, "BTC-USD-PERP") and all(r[1] for r in gap_rows(daemon, "BTC-USD-PERP", "book"))
            )
        )
        (chain_gap,) = gap_rows(daemon, "BTC-USD-PERP", "book")
        assert chain_gap[0].startswith("prevSeqId ")
        assert daemon.books.statistics().resubscribes == 1
        await wait_for(lambda: matches_truth(daemon, sim, "swap", "BTC-USD-PERP", "BTC-USD-SWAP"))
        assert book_gaps(daemon)["okx:BTC-USDT"] == 0 and book_gaps(daemon)["okx:ETH-USDT"] == 0

    sim_config = SimConfig(
        seed=7, rate=10.0, book_rate=20.0, okx_no_book_snapshot=True, okx_zero_checksum=True
    )
    await run_with(tmp_path, sim_config, body, ("book",))


async def test_a_dropped_connection_is_backfilled_by_trade_id_without_duplicates(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        symbol, native = "BTC-USDT-PERP", "BTC-USDT-SWAP"
        await wait_for(lambda: len(stored(tmp_path, symbol)) >= 10)
        counters = daemon.feed_counters["okx-swap"]
        # Trades go on while the feed reconnects (trade_while_unsubscribed): the first live trade after the
        # reconnect shows an id gap. A reconnect quicker than the next trade shows none: drop again.
        while not any(r[2] > 0 and r[1] for r in gap_rows(daemon, symbol, "trades")):
            connects = counters.connects
            sim.drop_connections()
            await wait_for(lambda c=connects: counters.connects > c and counters.state == "streaming")
            seen = len(stored(tmp_path, symbol))
            await wait_for(lambda n=seen: len(stored(tmp_path, symbol)) > n + 5)  # live trades again
        await wait_for(lambda: len(stored(tmp_path, symbol)) >= 60)
        # The gap that ended the loop is closed once its trades are on the bus, not in the database, and a
        # later drop's gap may still be queued: wait for the backfiller to be done and the ids to close up.
        await wait_for(
            lambda: (
                not daemon.backfiller.statistics().queued
                and all(r[1] for r in gap_rows(daemon, symbol, "trades"))
            )
        )
        with trio.move_on_after(10):
            await wait_for(lambda: contiguous(covered_fills(tmp_path, sim, symbol, native)))
        covered = covered_fills(tmp_path, sim, symbol, native)
        assert len(covered) == len(set(covered)), "a trade was stored twice"
        assert sorted(covered) == list(range(min(covered), max(covered) + 1)), "a trade is missing"
        recovered = sum(r[2] for r in gap_rows(daemon, symbol, "trades"))
        assert recovered > 0 and daemon.backfiller.statistics().recovered >= recovered

    config = SimConfig(seed=8, rate=100.0, book_rate=10.0, trade_while_unsubscribed=True)
    await run_with(tmp_path, config, body, ("trades",))


async def test_markets_report_contract_units(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        await wait_for(
            lambda: daemon.instruments.loaded("okx", "swap") and daemon.instruments.loaded("okx", "spot")
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.http.port}") as client:
            markets = (await client.get("/markets")).json()["markets"]
        by_symbol = {m["symbol"]: m for m in markets}
        assert by_symbol["BTC-USD-PERP"] | {"channels": None} == {
            "exchange": "okx",
            "market": "swap",
            "symbol": "BTC-USD-PERP",
            "native": "BTC-USD-SWAP",
            "channels": None,
            "amount_unit": "contracts",
            "contract_value": "100",
            "contract_currency": "USD",
            "inverse": True,
        }
        linear = by_symbol["BTC-USDT-PERP"]
        assert (linear["native"], linear["amount_unit"], linear["contract_value"]) == (
            "BTC-USDT-SWAP",
            "contracts",
            "0.01",
        )
        assert (linear["contract_currency"], linear["inverse"]) == ("BTC", False)
        spot = by_symbol["BTC-USDT"]
        assert (spot["amount_unit"], spot["contract_value"], spot["inverse"]) == ("base", None, False)
        # The large-trade notional of analytics follows the same contract terms.
        assert daemon.instruments.contracts[("okx", "BTC-USD-PERP")].inverse

    await run_with(tmp_path, SimConfig(seed=9, rate=5.0, book_rate=5.0), body, ("trades",))


async def test_a_rejected_instrument_shows_in_status_and_the_others_stream(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        await wait_for(
            lambda: len(stored(tmp_path, "BTC-USDT")) >= 5 and len(stored(tmp_path, "BTC-USD-PERP")) >= 5
        )
        counters = daemon.feed_counters["okx-spot"]
        assert list(counters.rejected) == ["trades:ETH-USDT"]
        assert "60018" in counters.rejected["trades:ETH-USDT"]
        assert "trades:ETH-USDT" not in counters.subscribed and "trades:BTC-USDT" in counters.subscribed
        assert stored(tmp_path, "ETH-USDT") == []

    config = SimConfig(seed=10, rate=20.0, faults=Faults(reject_topics=("trades:ETH-USDT",)))
    await run_with(tmp_path, config, body, ("trades",))


async def test_the_upgrade_notice_replaces_the_connection_before_it_closes(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        symbol = "BTC-USDT"
        await wait_for(lambda: len(stored(tmp_path, symbol)) >= 10)
        counters = daemon.feed_counters["okx-spot"]
        assert sim.okx_notice(close_after_s=1.0) == 2  # both feeds' connections
        await wait_for(lambda: counters.rotations == 1)
        seen = len(stored(tmp_path, symbol))
        await wait_for(lambda: len(stored(tmp_path, symbol)) >= seen + 20)
        # The replacement was subscribed before the old connection closed: no disconnect, no trade-id gap.
        assert counters.disconnects == 0
        assert [r for r in gap_rows(daemon, symbol, "trades") if "missing" in r[0]] == []
        ids = sorted(int(i) for i in stored_ids(tmp_path, symbol))
        assert len(ids) == len(set(ids))

    await run_with(tmp_path, SimConfig(seed=11, rate=30.0), body, ("trades",))
