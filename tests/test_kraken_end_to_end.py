"""Kraken v2 through the whole daemon, against the simulator: trades exact with taker sides, books checked
by the top-10 CRC32 and resynced per pair after checksum failures (each recorded in `gaps`), and a dropped
connection's missed trades fetched back by trade id.

Real sockets on 127.0.0.1; every wait is bounded by `trio.fail_after` and waits on a condition.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.sim import Faults, SimConfig, SimServer
from tests.conftest import wait_for

NATIVE = {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD"}


def config_for(
    tmp_path: Path, sim: SimServer, channels: tuple[str, ...], depth: int = 10, backoff_s: float = 0.05
) -> Config:
    base = default_config(env={})
    ws_url, rest_url = sim.urls("kraken", "spot")
    feed = FeedConfig(
        exchange="kraken",
        market="spot",
        symbols=tuple(NATIVE),
        channels=channels,
        book_depth=depth,
        ws_url=ws_url,
        rest_url=rest_url,
        stale_timeout_s=3.0,
    )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0", public_reads=True),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/mf.db", flush_interval_s=0.05),
        supervisor=attrs.evolve(
            base.supervisor, backoff_initial_s=backoff_s, backoff_max_s=max(0.2, backoff_s)
        ),
        feeds=(feed,),
    )


def stored(tmp_path: Path, symbol: str) -> list[tuple[str, str, str, str]]:
    """(id, price, amount, side) rows; decimals written out plainly (SQLite keeps `str(Decimal)`, which
    is exact but writes `0.00000079` as `7.9E-7`)."""
    return [(i, plain(p), plain(a), s) for i, p, a, s in stored_rows(tmp_path, symbol)]


def plain(text: str) -> str:
    return format(Decimal(text), "f")


def stored_rows(tmp_path: Path, symbol: str) -> list[tuple[str, str, str, str]]:
    conn = sqlite3.connect(tmp_path / "mf.db")
    try:
        return conn.execute(
            "SELECT id, price, amount, side FROM trades WHERE exchange = 'kraken' AND symbol = ?", (symbol,)
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def run_with(
    tmp_path: Path,
    sim_config: SimConfig,
    body: Callable[[Daemon, SimServer], Awaitable[None]],
    channels: tuple[str, ...],
    depth: int = 10,
    backoff_s: float = 0.05,
) -> None:
    sim = SimServer(sim_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim, channels, depth, backoff_s))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            await body(daemon, sim)
            await daemon.stop()
        nursery.cancel_scope.cancel()


def gap_rows(daemon: Daemon, symbol: str, channel: str) -> list[tuple[str, int | None, int]]:
    return [
        (r.reason, r.end, r.recovered) for r in daemon.ledger.query("kraken", symbol) if r.channel == channel
    ]


def missing_ids(tmp_path: Path, symbol: str) -> list[int]:
    ids = {int(r[0]) for r in stored_rows(tmp_path, symbol)}
    return sorted(set(range(min(ids), max(ids) + 1)) - ids) if ids else []


def backfill_idle(daemon: Daemon) -> bool:
    open_rows = [r for s in NATIVE for r in gap_rows(daemon, s, "trades") if r[1] is None]
    return not daemon.backfiller.statistics().queued and not open_rows


def matches_truth(daemon: Daemon, sim: SimServer, symbol: str, depth: int) -> bool:
    view = daemon.books.view("kraken", symbol, depth)
    if view is None or view.status != "synced":
        return False
    bids, asks, _ = sim.true_book("kraken", "spot", NATIVE[symbol], depth)
    got = (
        [(format(p, "f"), format(q, "f")) for p, q in view.bids],
        [(format(p, "f"), format(q, "f")) for p, q in view.asks],
    )
    return got == (bids, asks)


async def test_trades_are_stored_exactly_with_taker_sides_through_malformed_frames(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        for symbol in NATIVE:
            await wait_for(lambda s=symbol: len(stored(tmp_path, s)) >= 80)
        for symbol, native in NATIVE.items():
            truth = {t.id: t for t in sim.generated_trades("kraken", "spot", native)}
            rows = stored(tmp_path, symbol)
            for trade_id, price, amount, side in rows:
                sim_trade = truth[trade_id]
                assert (price, amount, side) == (sim_trade.price, sim_trade.size, sim_trade.side.lower())
            ids = sorted(int(r[0]) for r in rows)
            assert ids == list(range(ids[0], ids[0] + len(ids))), (
                "ids are contiguous: nothing lost or doubled"
            )
        assert any("45285" in r[1] or r[1].endswith("0") for r in stored(tmp_path, "BTC-USD"))
        assert sum(d.counters.malformed for d in daemon.decoders.values()) > 0

    config = SimConfig(seed=21, rate=40.0, faults=Faults(malformed_every=7))
    await run_with(tmp_path, config, body, ("trades",))


async def test_checksum_failures_resync_that_pair_only_and_are_recorded(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        for symbol in NATIVE:
            await wait_for(lambda s=symbol: matches_truth(daemon, sim, s, 25))
        books = daemon.books.statistics().books
        assert books["kraken:BTC-USD"].gaps == books["kraken:ETH-USD"].gaps == 0
        sim.kraken.bad_checksum("BTC/USD")
        await wait_for(lambda: daemon.books.statistics().books["kraken:BTC-USD"].gaps == 1)
        sim.skip_update("kraken", "spot", "ETH/USD")  # a lost message: only the checksum can tell
        await wait_for(lambda: daemon.books.statistics().books["kraken:ETH-USD"].gaps == 1)
        # Each is resubscribed alone (a fresh snapshot at the same depth), its gap row closed, and the
        # book equals the simulator's again.
        for symbol in NATIVE:
            await wait_for(
                lambda s=symbol: (
                    bool(gap_rows(daemon, s, "book")) and all(r[1] for r in gap_rows(daemon, s, "book"))
                )
            )
            await wait_for(lambda s=symbol: matches_truth(daemon, sim, s, 25))
            ((reason, _, _),) = gap_rows(daemon, symbol, "book")
            assert reason.startswith("checksum ") and " sent (message " in reason
        stats = daemon.books.statistics()
        assert stats.resubscribes == 2
        assert [stats.books[f"kraken:{s}"].resyncs for s in NATIVE] == [1, 1]

    await run_with(
        tmp_path, SimConfig(seed=22, rate=5.0, book_rate=20.0, book_levels=60), body, ("book",), 25
    )


async def test_a_dropped_connection_is_backfilled_by_trade_id_without_duplicates(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        symbol, native = "BTC-USD", "BTC/USD"
        await wait_for(lambda: len(stored(tmp_path, symbol)) >= 20)
        counters = daemon.feed_counters["kraken-spot"]
        # Trades go on while the feed reconnects (after up to 0.5 s, ~900 trades/s): when more than the 50
        # of the subscription's snapshot are missed, the first trade after it shows an id gap that
        # /0/public/Trades fills (at 1 request/s, so each drop waits for the backfill to finish).
        while not any(r[2] > 0 and r[1] for r in gap_rows(daemon, symbol, "trades")):
            connects = counters.connects
            sim.drop_connections()
            await wait_for(lambda c=connects: counters.connects > c and counters.state == "streaming")
            seen = len(stored(tmp_path, symbol))
            await wait_for(lambda n=seen: len(stored(tmp_path, symbol)) > n + 5)
            await wait_for(lambda: backfill_idle(daemon))
        # The backfilled trades reach the database through the writer: wait until the ids close up.
        with trio.move_on_after(10):
            await wait_for(lambda: missing_ids(tmp_path, symbol) == [])
        missing = missing_ids(tmp_path, symbol)
        assert not missing, (missing[:3], len(missing), gap_rows(daemon, symbol, "trades"))
        truth = {t.id: t for t in sim.generated_trades("kraken", "spot", native)}
        rows = stored(tmp_path, symbol)
        assert len(rows) == len({r[0] for r in rows}), "a trade was stored twice"
        for trade_id, price, amount, side in rows:
            assert (price, amount, side) == (
                truth[trade_id].price,
                truth[trade_id].size,
                truth[trade_id].side.lower(),
            )
        recovered = [r for r in gap_rows(daemon, symbol, "trades") if r[2] > 0]
        assert recovered and all(r[0].startswith("trade ids ") and "missing" in r[0] for r in recovered)

    config = SimConfig(seed=23, rate=200.0, trade_history=20_000, trade_while_unsubscribed=True)
    await run_with(tmp_path, config, body, ("trades",), backoff_s=0.5)


async def test_markets_lists_the_pairs_with_their_natives(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        await wait_for(lambda: daemon.instruments.loaded("kraken", "spot"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.http.port}") as client:
            markets = (await client.get("/markets")).json()["markets"]
        by_symbol = {m["symbol"]: m for m in markets if m["exchange"] == "kraken"}
        assert {s: m["native"] for s, m in by_symbol.items()} == NATIVE
        assert by_symbol["BTC-USD"]["amount_unit"] == "base"

    await run_with(tmp_path, SimConfig(seed=24, rate=5.0), body, ("trades",))


async def test_ticker_state_is_the_last_message_sent(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer) -> None:
        stream = sim.book_feed("kraken", "spot", "BTC/USD").streams["ticker:BTC/USD"]
        sent: deque[str] = stream.sent  # type: ignore[attr-defined]
        live = daemon.market.live

        def last_sent() -> dict[str, Any]:
            return json.loads(sent[-1], parse_float=Decimal)["data"][0]  # type: ignore[no-any-return]

        def caught_up() -> bool:
            ticker, _ = live.ticker("kraken", "BTC-USD")
            if len(sent) < 10 or ticker is None:
                return False
            wire = last_sent()
            return (ticker.bid, ticker.ask, ticker.bid_size) == (wire["bid"], wire["ask"], wire["bid_qty"])

        await wait_for(caught_up, interval=0.01)
        # No checkpoint from here on: the daemon's state and the simulator's record are one instant's.
        ticker, derivs = live.ticker("kraken", "BTC-USD")
        wire = last_sent()
        assert ticker is not None and derivs is None
        got = [ticker.bid, ticker.bid_size, ticker.ask, ticker.ask_size, ticker.last, ticker.volume_24h]
        assert [format(v, "f") for v in got if v is not None] == [
            format(wire[k], "f") for k in ("bid", "bid_qty", "ask", "ask_qty", "last", "volume")
        ]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.http.port}") as client:
            shown = (await client.get("/ticker/kraken/BTC-USD")).json()
        assert (shown["exchange"], shown["symbol"], shown["mark_price"]) == ("kraken", "BTC-USD", None)
        assert shown["bid"] is not None and shown["ask"] is not None

    await run_with(tmp_path, SimConfig(seed=25, rate=10.0, book_rate=40.0), body, ("ticker",))
