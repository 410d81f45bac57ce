"""Tickers, derivatives and liquidations end to end: simulator -> feeds -> decoders -> live state -> SQLite.

The simulator keeps every payload its streams sent (`sent`) and every open-interest answer it served, so
the checks below compute what must be stored and shown independently from the wire, not from the daemon.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio

from marketflow.config import Config, FeedConfig
from marketflow.daemon import Daemon
from marketflow.model import Liquidation
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.faults import Faults
from tests.conftest import sim_config, wait_for

SYMBOL = "BTCUSDT"


def _config(tmp_path: Path, sim: SimServer, exchange: str, market: str, channels: tuple[str, ...]) -> Config:
    base = sim_config(tmp_path, sim, markets=(), flush_interval_s=0.05)
    ws, rest = sim.urls(exchange, market)
    feed = FeedConfig(
        exchange=exchange,
        market=market,
        symbols=("BTC-USDT-PERP",),
        channels=channels,
        ws_url=ws,
        rest_url=rest,
        stale_timeout_s=5.0,
    )
    return attrs.evolve(base, feeds=(feed,))


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _sent(sim: SimServer, exchange: str, market: str, stream: str) -> list[dict[str, Any]]:
    feed = sim.book_feed(exchange, market, SYMBOL)
    found = feed.streams.get(stream)
    if found is None:
        return []
    payloads = [json.loads(p) for p in getattr(found, "sent")]  # noqa: B009 - the sim's own record
    return payloads


LIQUIDATIONS = "SELECT exchange, symbol, id, side, price, amount, ts FROM liquidations"


def _binance_forced(sim: SimServer) -> set[tuple[Any, ...]]:
    """The liquidation rows the forced orders the simulator has sent so far must be stored as."""
    return {
        (
            "binance",
            "BTC-USDT-PERP",
            f"{o['T']}:{o['S']}:{o['p']}:{o['q']}",
            o["S"].lower(),
            o["p"],
            o["q"],
            o["T"] * 1000,
        )
        for o in (p["o"] for p in _sent(sim, "binance", "usdm", "btcusdt@forceOrder"))
    }


async def test_binance_usdm_derivatives_and_liquidations_stored_exactly_and_once(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=5, rate=20, book_rate=20, faults=Faults(out_of_order_every=4)))
    db = tmp_path / "marketflow.db"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = _config(tmp_path, sim, "binance", "usdm", ("ticker", "derivatives", "liquidations"))
            config = attrs.evolve(config, derivatives=attrs.evolve(config.derivatives, sample_interval_s=0.5))
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            # The venue keeps sending while the daemon runs, and a forced order published while it stops
            # may never be read: compare while it runs, until what is stored is exactly what was sent.
            agreed: set[tuple[Any, ...]] = set()

            def stored_as_sent() -> bool:
                agreed.clear()
                agreed.update(_rows(db, LIQUIDATIONS))
                return len(agreed) >= 3 and agreed == _binance_forced(sim)

            await wait_for(
                lambda: (
                    len(_rows(db, "SELECT ts FROM derivatives WHERE open_interest IS NOT NULL")) >= 3
                    and stored_as_sent()
                ),
                interval=0.1,
            )
            await daemon.stop()
            nursery.cancel_scope.cancel()

    stored = _rows(db, LIQUIDATIONS)
    assert len(stored) == len(set(stored))  # once each
    # Every forced order the venue sent, exactly as sent (the equality held while it ran); the ones sent
    # since then are real ones too.
    assert agreed <= set(stored) <= _binance_forced(sim)

    # Idempotent: the same events written again (a replay, a second daemon) add nothing.
    store = daemon.store
    await store.open()
    again = [Liquidation(r[0], r[1], r[2], r[3], Decimal(r[4]), Decimal(r[5]), r[6], 0) for r in stored]
    await store.write_liquidations(again)
    assert sorted(_rows(db, LIQUIDATIONS)) == sorted(stored)
    await store.close()

    marks = {
        (d["p"], d["i"], d["r"], d["T"] * 1000) for d in _sent(sim, "binance", "usdm", "btcusdt@markPrice@1s")
    }
    served = {body["openInterest"] for body in sim.rest.open_interest_served}
    samples = _rows(
        db,
        "SELECT ts, mark_price, index_price, funding_rate, next_funding_ts, open_interest, "
        "open_interest_value FROM derivatives ORDER BY ts",
    )
    assert samples
    buckets = [row[0] // 500_000 for row in samples]
    assert len(buckets) == len(set(buckets))  # one row per sample interval at most
    for _, mark, index, rate, next_funding, oi, oi_value in samples:
        if mark is not None:
            assert (mark, index, rate, next_funding) in marks  # the venue's strings, exactly
        assert oi is None or oi in served
        assert oi_value is None  # Binance gives no open interest value


def _brute_force_bybit(payloads: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """Per field: the value of the newest frame carrying it (by `ts`; the later frame on a tie)."""
    fields: dict[str, tuple[int, str]] = {}
    for frame in payloads:
        for name, value in frame["data"].items():
            if name == "symbol":
                continue
            if name not in fields or frame["ts"] >= fields[name][0]:
                fields[name] = (frame["ts"], value)
    return fields


async def test_bybit_linear_ticker_equals_a_replay_of_every_delta(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=9, rate=20, book_rate=40, faults=Faults(out_of_order_every=3)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = _config(tmp_path, sim, "bybit", "linear", ("ticker", "derivatives"))
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            live = daemon.market.live

            def caught_up() -> bool:
                sent = _sent(sim, "bybit", "linear", "tickers.BTCUSDT")
                ticker, derivs = live.ticker("bybit", "BTC-USDT-PERP")
                return (
                    len(sent) > 60
                    and derivs is not None
                    and ticker is not None
                    and ticker.ts == derivs.ts == max(f["ts"] for f in sent) * 1000
                )

            await wait_for(caught_up, interval=0.01)
            # No checkpoint from here on: the daemon's state and the sim's record are one instant's.
            payloads = _sent(sim, "bybit", "linear", "tickers.BTCUSDT")
            ticker, derivs = live.ticker("bybit", "BTC-USDT-PERP")
            stats = live.statistics()
            await daemon.stop()
            nursery.cancel_scope.cancel()

    assert any(p["type"] == "delta" and len(p["data"]) < 5 for p in payloads)  # deltas omit fields
    assert stats.stale_fields > 0  # the out-of-order fault happened and was refused
    expected = {name: value for name, (_, value) in _brute_force_bybit(payloads).items()}
    assert ticker is not None and derivs is not None
    got = {
        "bid1Price": ticker.bid,
        "bid1Size": ticker.bid_size,
        "ask1Price": ticker.ask,
        "ask1Size": ticker.ask_size,
        "lastPrice": ticker.last,
        "volume24h": ticker.volume_24h,
        "markPrice": derivs.mark_price,
        "indexPrice": derivs.index_price,
        "fundingRate": derivs.funding_rate,
        "openInterest": derivs.open_interest,
        "openInterestValue": derivs.open_interest_value,
    }
    assert {k: format(v, "f") for k, v in got.items() if v is not None} == {
        k: v for k, v in expected.items() if k != "nextFundingTime"
    }
    assert derivs.next_funding_time == int(expected["nextFundingTime"]) * 1000


def _okx_sent(sim: SimServer, stream: str) -> list[dict[str, Any]]:
    found = sim.book_feed("okx", "swap", "BTC-USDT-SWAP").streams.get(stream)
    return [] if found is None else [json.loads(p) for p in getattr(found, "sent")]  # noqa: B009


def _okx_liquidations(sim: SimServer) -> set[tuple[Any, ...]]:
    """The liquidation rows the BTC-USDT-SWAP details the simulator has sent so far must be stored as."""
    details = [
        (entry["instId"], d)
        for p in _okx_sent(sim, "liquidation-orders:SWAP:BTC-USDT-SWAP")
        for entry in p["data"]
        for d in entry["details"]
    ]
    return {
        ("okx", "BTC-USDT-PERP", f"{d['ts']}:{d['side']}/{d['posSide']}:{d['bkPx']}:{d['sz']}", d["side"],
         d["bkPx"], d["sz"], int(d["ts"]) * 1000)
        for inst, d in details
        if inst == "BTC-USDT-SWAP"
    }  # fmt: skip


async def test_okx_swap_derivatives_and_liquidations_stored_exactly_and_once(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=3, rate=20, book_rate=20))
    db = tmp_path / "marketflow.db"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = _config(tmp_path, sim, "okx", "swap", ("ticker", "derivatives", "liquidations"))
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            # As for Binance: compared while the venue sends, until what is stored is what was sent.
            agreed: set[tuple[Any, ...]] = set()

            def stored_as_sent() -> bool:
                agreed.clear()
                agreed.update(_rows(db, LIQUIDATIONS))
                return len(agreed) >= 3 and agreed == _okx_liquidations(sim)

            await wait_for(
                lambda: (
                    len(_rows(db, "SELECT ts FROM derivatives WHERE funding_rate IS NOT NULL")) >= 2
                    and stored_as_sent()
                ),
                interval=0.1,
            )
            ticker, derivs = daemon.market.live.ticker("okx", "BTC-USDT-PERP")
            await daemon.stop()
            nursery.cancel_scope.cancel()

    stored = _rows(db, LIQUIDATIONS)
    assert len(stored) == len(set(stored))
    assert agreed <= set(stored) <= _okx_liquidations(sim)  # the other swaps' are not ours

    def values(stream: str, field: str) -> set[str]:
        return {d[field] for p in _okx_sent(sim, stream) for d in p["data"]}

    samples = _rows(
        db,
        "SELECT mark_price, index_price, funding_rate, open_interest, open_interest_value FROM derivatives",
    )
    assert samples
    for mark, index, rate, oi, oi_usd in samples:
        assert mark is None or mark in values("mark-price:BTC-USDT-SWAP", "markPx")
        assert index is None or index in values("index-tickers:BTC-USDT", "idxPx")
        assert rate is None or rate in values("funding-rate:BTC-USDT-SWAP", "fundingRate")
        assert oi is None or oi in values("open-interest:BTC-USDT-SWAP", "oi")
        assert oi_usd is None or oi_usd in values("open-interest:BTC-USDT-SWAP", "oiUsd")
    assert (
        ticker is not None
        and ticker.bid is not None
        and format(ticker.bid, "f") in values("tickers:BTC-USDT-SWAP", "bidPx")
    )
    assert derivs is not None and derivs.next_funding_time is not None


def test_a_capture_replays_into_the_same_liquidations_and_samples(tmp_path: Path) -> None:
    """Capture and replay cover the new channels: a live run's frames, replayed, store the same rows."""
    from marketflow.replay import Replay, ReplayClock

    live_dir, replay_db = tmp_path / "live", tmp_path / "replayed.db"
    live_dir.mkdir()

    async def record() -> None:
        sim = SimServer(SimConfig(seed=11, rate=20, book_rate=20))
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = _config(live_dir, sim, "bybit", "linear", ("ticker", "derivatives", "liquidations"))
            config = attrs.evolve(config, capture=attrs.evolve(config.capture, enabled=True))
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            db = live_dir / "marketflow.db"
            await wait_for(lambda: len(_rows(db, "SELECT id FROM liquidations")) >= 3, interval=0.1)
            await daemon.stop()
            nursery.cancel_scope.cancel()

    trio.run(record)
    files = sorted((live_dir / "capture").rglob("*.jsonl.zst"))
    assert files
    base = sim_config(tmp_path, SimServer(SimConfig()), markets=())
    replayed = attrs.evolve(base, storage=attrs.evolve(base.storage, url=f"sqlite:///{replay_db}"))
    trio.run(Replay(replayed, files).run, clock=ReplayClock())

    query = "SELECT exchange, symbol, id, side, price, amount, ts FROM liquidations ORDER BY ts, id"
    live_rows = _rows(live_dir / "marketflow.db", query)
    assert live_rows and _rows(replay_db, query) == live_rows
    samples = "SELECT ts, mark_price, index_price, funding_rate, open_interest FROM derivatives ORDER BY ts"
    live_samples = _rows(live_dir / "marketflow.db", samples)
    assert live_samples and _rows(replay_db, samples) == live_samples


async def test_crashed_market_data_children_come_back_and_work(tmp_path: Path) -> None:
    """The keeper, the sinks and the poller, each crashed: a fresh actor takes over the same bus/queue."""
    from tests.test_daemon_restarts import crash, still_running

    sim = SimServer(SimConfig(seed=8, rate=20, book_rate=20))
    db = tmp_path / "marketflow.db"
    poller = "binance-usdm/poll-derivatives"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = _config(tmp_path, sim, "binance", "usdm", ("ticker", "derivatives", "liquidations"))
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            liquidations = "SELECT COUNT(*) FROM liquidations"
            with_oi = "SELECT COUNT(*) FROM derivatives WHERE open_interest IS NOT NULL"
            await wait_for(lambda: _rows(db, liquidations)[0][0] >= 1, interval=0.05)
            for name in ("market_data", "liquidations", "derivatives", poller):
                before = (_rows(db, liquidations)[0][0], len(sim.rest.open_interest_served))
                await crash(daemon, name)
                await wait_for(
                    lambda b=before: (
                        _rows(db, liquidations)[0][0] > b[0] and len(sim.rest.open_interest_served) > b[1]
                    ),
                    interval=0.05,
                )
                await still_running(daemon, name, 0.3)
            await wait_for(lambda: _rows(db, with_oi)[0][0] >= 2, interval=0.05)
            await daemon.stop()
            nursery.cancel_scope.cancel()


def test_a_reconnect_records_the_liquidations_it_may_have_missed(tmp_path: Path) -> None:
    sim = SimServer(SimConfig())
    daemon = Daemon(_config(tmp_path, sim, "bybit", "linear", ("ticker", "liquidations")))
    daemon.on_reconnect("bybit-linear", 1_000_000, 5_000_000)
    (record,) = daemon.ledger.query("bybit", "BTC-USDT-PERP")
    assert (record.channel, record.start, record.end) == ("liquidations", 1_000_000, 5_000_000)
    assert record.reason == "disconnected; liquidations in between are not recoverable"
    quiet = Daemon(_config(tmp_path / "t", sim, "bybit", "linear", ("ticker", "derivatives")))
    quiet.on_reconnect("bybit-linear", 1_000_000, 5_000_000)
    assert quiet.ledger.query("bybit", "BTC-USDT-PERP") == []  # the live state just resumes
