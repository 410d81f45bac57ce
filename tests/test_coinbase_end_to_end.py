"""Coinbase through the whole daemon on the simulator: trades exact with taker sides, books exact after
sequence gaps (each in `gaps`), trade-id gaps filled over REST, a quiet product kept by heartbeats, and a
multi-MB level2 snapshot within the configured message bound."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import attrs
import httpx
import trio

from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.sim import Faults, SimConfig, SimServer
from tests.conftest import wait_for

PRODUCTS = ("BTC-USD", "ETH-USD")
TAKER = {"Buy": "buy", "Sell": "sell"}


def config_for(
    tmp_path: Path, sim: SimServer, products: tuple[str, ...] = PRODUCTS, **feed: object
) -> Config:
    base = default_config(env={})
    ws_url, rest_url = sim.urls("coinbase", "spot")
    coinbase = FeedConfig(
        "coinbase", "spot", products, book_depth=0, ws_url=ws_url, rest_url=rest_url, stale_timeout_s=5.0
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/mf.db", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        feeds=(attrs.evolve(coinbase, **feed),),
    )


def book_is_true(daemon: Daemon, sim: SimServer, product: str) -> bool:
    """The daemon's whole book equals the simulator's, level for level (exact decimals)."""
    view = daemon.books.view("coinbase", product)
    if view is None or view.status != "synced":
        return False
    bids, asks, _ = sim.true_book("coinbase", "spot", product, 100_000)
    return view.bids == exact(bids) and view.asks == exact(asks)


def exact(levels: list[tuple[str, str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(p), Decimal(q)) for p, q in levels]


async def books_true(daemon: Daemon, sim: SimServer) -> None:
    for product in PRODUCTS:
        await wait_for(lambda p=product: book_is_true(daemon, sim, p), 0.01)


def gaps(daemon: Daemon) -> dict[str, int]:
    return {key: s.gaps for key, s in daemon.books.statistics().books.items()}


def stored(db: Path, product: str) -> list[tuple[str, str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id, price, amount, side FROM trades WHERE exchange = 'coinbase' AND symbol = ?",
            (product,),
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return sorted(rows, key=lambda r: int(r[0]))


async def test_trades_exact_and_books_exact_after_sequence_gaps(tmp_path: Path) -> None:
    faults = Faults(malformed_every=5)  # and malformed frames all along: counted, never stored
    sim = SimServer(SimConfig(seed=61, rate=20, book_rate=20, trade_while_unsubscribed=True, faults=faults))
    db = tmp_path / "mf.db"
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            await books_true(daemon, sim)
            assert set(gaps(daemon).values()) == {0}
            # A lost level2 update: sequence_num jumps on the connection, both of its books resync.
            for fault in ("lost update", "sequence jump"):
                before = gaps(daemon)
                if fault == "lost update":
                    sim.skip_update("coinbase", "spot", "BTC-USD")
                else:
                    sim.coinbase_sequence_jump(4)
                await wait_for(lambda b=before: all(gaps(daemon)[k] > b[k] for k in b), 0.01)
                assert all(gaps(daemon)[k] == before[k] + 1 for k in before)
                await books_true(daemon, sim)
            # A lost trades message: the trade ids jump, the backfiller fetches them from the ticker.
            sim.coinbase_lose_trades("ETH-USD")
            await wait_for(
                lambda: any(r.channel == "trades" and r.recovered for r in daemon.ledger.query("coinbase")),
                0.02,
            )
            # A dropped connection: the recent-trades snapshot (and REST, if needed) covers the outage.
            sim.drop_connections()
            await wait_for(lambda: daemon.feed_counters["coinbase-spot"].connects >= 2, 0.01)
            await wait_for(lambda: daemon.feed_counters["coinbase-spot"].state == "streaming", 0.01)
            await books_true(daemon, sim)
            # What the dashboard reads: /markets (base units: Coinbase needs no instrument metadata) and
            # the whole book at /book.
            await wait_for(lambda: daemon.instruments.loaded("coinbase", "spot"), 0.01)
            assert daemon.http is not None
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.http.port}") as client:
                markets = (await client.get("/markets")).json()["markets"]
                book = (await client.get("/book/coinbase/ETH-USD")).json()
            assert [(m["exchange"], m["symbol"], m["native"], m["amount_unit"]) for m in markets] == [
                ("coinbase", p, p, "base") for p in PRODUCTS
            ]
            assert book["status"] == "synced" and len(book["bids"]) > 50
            marks = {p: int(sim.generated_trades("coinbase", "spot", p)[-1].id) for p in PRODUCTS}
            await wait_for(
                lambda: all(stored(db, p) and int(stored(db, p)[-1][0]) >= marks[p] for p in PRODUCTS), 0.02
            )
            counters = daemon.decoders["coinbase-spot"].counters
            assert counters.malformed + counters.ignored > 0 and sim.statistics().malformed_sent > 0
            await daemon.stop()
        nursery.cancel_scope.cancel()
    for product in PRODUCTS:
        rows = stored(db, product)
        first, last = int(rows[0][0]), int(rows[-1][0])
        assert [int(r[0]) for r in rows] == list(range(first, last + 1)), f"{product}: ids have holes"
        truth = {
            t.id: (t.id, t.price, t.size, TAKER[t.side])
            for t in sim.generated_trades("coinbase", "spot", product)
        }
        assert rows == [truth[r[0]] for r in rows], f"{product}: stored trades differ from the tape"
    records = daemon.ledger.query("coinbase")
    book_records = [r for r in records if r.channel == "book" and r.reason.startswith("sequence_num jumped")]
    # Three sequence gaps (the lost update, the jump, the lost trades message), each on both books.
    assert sorted(r.symbol for r in book_records) == sorted(PRODUCTS * 3)
    assert all(r.end is not None for r in book_records)
    (filled,) = [r for r in records if r.channel == "trades" and r.reason.startswith("trade ids")]
    low, high = (int(x) for x in filled.reason.split()[2].split(".."))
    assert filled.symbol == "ETH-USD" and filled.recovered == high - low + 1 and filled.end is not None


async def test_a_quiet_product_keeps_its_connection_through_heartbeats(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    sim = SimServer(SimConfig(seed=62, coinbase_quiet=("XLM-USD",)))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim, ("XLM-USD",)))
        await nursery.start(daemon.run)
        counters = daemon.feed_counters["coinbase-spot"]
        await wait_for(lambda: counters.state == "streaming", 0.01)
        streaming_at = trio.current_time()
        await trio.sleep(300)  # the venue closes a channel without updates after 60-90 s
        assert trio.current_time() - streaming_at >= 300
        assert (counters.connects, counters.disconnects, counters.state) == (1, 0, "streaming")
        assert counters.pongs >= 299  # one heartbeat a second
        view = daemon.books.view("coinbase", "XLM-USD")
        assert view is not None and view.status == "synced" and view.bids and view.asks
        await daemon.stop()
        nursery.cancel_scope.cancel()


async def test_a_multi_megabyte_snapshot_within_the_configured_bound(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=63, rate=5, book_rate=2, book_levels=30_000))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        for max_mb, fits in ((16, True), (1, False)):
            daemon: Daemon = Daemon(
                config_for(tmp_path / str(max_mb), sim, ("BTC-USD",), max_message_mb=max_mb)
            )
            (tmp_path / str(max_mb)).mkdir()
            await nursery.start(daemon.run)
            counters = daemon.feed_counters["coinbase-spot"]
            with trio.fail_after(60):
                if fits:
                    await wait_for(lambda d=daemon: book_is_true(d, sim, "BTC-USD"), 0.05)
                    view = daemon.books.view("coinbase", "BTC-USD")
                    assert view is not None and len(view.bids) > 25_000 and counters.bytes > 5 * 1024 * 1024
                else:
                    await wait_for(
                        lambda c=counters: "exceeds limit of 1048576 bytes" in (c.last_error or ""), 0.05
                    )
                await daemon.stop()
        nursery.cancel_scope.cancel()


async def test_the_ticker_follows_the_tape_and_the_book(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=64, rate=10, book_rate=10))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim, ("BTC-USD",), channels=("trades", "ticker")))
        await nursery.start(daemon.run)

        def caught_up() -> bool:
            ticker, _ = daemon.market.live.ticker("coinbase", "BTC-USD")
            trades = sim.generated_trades("coinbase", "spot", "BTC-USD")
            return ticker is not None and bool(trades) and ticker.last == Decimal(trades[-1].price)

        with trio.fail_after(30):
            await wait_for(caught_up, 0.01)
            ticker, derivatives = daemon.market.live.ticker("coinbase", "BTC-USD")
            await daemon.stop()
        nursery.cancel_scope.cancel()
    assert ticker is not None and derivatives is None
    assert ticker.bid is not None and ticker.ask is not None and ticker.bid < ticker.ask
    assert ticker.bid_size and ticker.ask_size and ticker.volume_24h and ticker.volume_24h > 0
