"""`asset=` end to end (SPEC §15): a daemon on the simulator collecting BTC on two venues' spot, linear and
inverse markets; the cross-venue answers against a brute force over the stored trades with the contract
conversions written out independently; live and storage answers equal; a venue's reconnect shows as its
gaps; bad parameters are 400s naming the parameter, over HTTP and MCP."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from marketflow.api import asset_queries
from marketflow.api.queries import QueryContext, QueryError
from marketflow.config import Config, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.model import us_to_iso
from marketflow.sim import SimConfig, SimServer
from tests.api.test_mcp import modern
from tests.conftest import wait_for

SECOND = 1_000_000
FEEDS = {
    ("bybit", "spot"): ("BTC-USDT", "ETH-USDT"),
    ("bybit", "linear"): ("BTC-USDT-PERP",),
    ("okx", "spot"): ("BTC-USDT",),
    ("okx", "swap"): ("BTC-USDT-PERP", "BTC-USD-PERP"),
}
BTC = sorted(f"{ex}/{mk}/{s}" for (ex, mk), symbols in FEEDS.items() for s in symbols if s.startswith("BTC"))


def config_for(tmp_path: Path, sim: SimServer) -> Config:
    base = default_config(env={})
    feeds = []
    for (exchange, market), symbols in FEEDS.items():
        ws_url, rest_url = sim.urls(exchange, market)
        feeds.append(
            FeedConfig(
                exchange=exchange,
                market=market,
                symbols=symbols,
                channels=("trades",),
                ws_url=ws_url,
                rest_url=rest_url,
                stale_timeout_s=3.0,
            )
        )
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0", public_reads=True),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/mf.db", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        analytics=attrs.evolve(base.analytics, candle_intervals=("1s", "1m")),
        feeds=tuple(feeds),
    )


def stored(tmp_path: Path, exchange: str, symbol: str, since: int, until: int) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(tmp_path / "mf.db")
    try:
        return conn.execute(
            "SELECT ts, id, price, amount, side FROM trades WHERE exchange = ? AND symbol = ? AND ts >= ? "
            "AND ts < ?",
            (exchange, symbol, since, until),
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def to_base(price: Decimal, amount: Decimal, symbol: str) -> Decimal:
    """An okx swap amount in BTC with the simulator's contract terms (linear 0.01 BTC, inverse 100 USD)."""
    if symbol == "BTC-USDT-PERP":
        return amount * Decimal("0.01")
    with localcontext() as ctx:
        ctx.prec = 100
        return (amount * 100 / price).quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN)


def brute_bars(tmp_path: Path, since: int, until: int, step: int) -> dict[int, dict[str, list[Decimal]]]:
    """bar start → market → [buy, sell] in base units, from the stored rows."""
    out: dict[int, dict[str, list[Decimal]]] = defaultdict(dict)
    for key in BTC:
        exchange, _market, symbol = key.split("/")
        for ts, _id, price_text, amount_text, side in stored(tmp_path, exchange, symbol, since, until):
            price, amount = Decimal(price_text), Decimal(amount_text)
            if amount <= 0:
                continue
            if exchange == "okx" and symbol.endswith("-PERP"):
                amount = to_base(price, amount, symbol)
            cell = out[ts - ts % step].setdefault(key, [Decimal(0), Decimal(0)])
            cell[0 if side == "buy" else 1] += amount
    return out


def check_order_flow(body: dict[str, Any], brute: dict[int, dict[str, list[Decimal]]]) -> None:
    assert [bar["start"] for bar in body["bars"]] == [us_to_iso(start) for start in sorted(brute)]
    cvd = Decimal(0)
    for bar, start in zip(body["bars"], sorted(brute), strict=True):
        venues = brute[start]
        assert {
            k: [Decimal(v["buy_volume"]), Decimal(v["sell_volume"])] for k, v in bar["by_venue"].items()
        } == venues
        buy = sum((v[0] for v in venues.values()), Decimal(0))
        sell = sum((v[1] for v in venues.values()), Decimal(0))
        cvd += buy - sell
        assert (Decimal(bar["buy_volume"]), Decimal(bar["sell_volume"])) == (buy, sell)
        assert (Decimal(bar["delta"]), Decimal(bar["cvd"])) == (buy - sell, cvd)


async def run(tmp_path: Path, body: Any, seed: int = 21) -> None:
    sim = SimServer(SimConfig(seed=seed, rate=40.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(config_for(tmp_path, sim))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            await wait_for(
                lambda: (
                    all(daemon.instruments.loaded(ex, mk) for ex, mk in FEEDS)
                    and all(stored(tmp_path, *k.split("/")[::2], 0, 2**62) for k in BTC)
                )
            )
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{daemon.http.port}", timeout=10
            ) as client:
                await body(daemon, sim, client)
            await daemon.stop()
        nursery.cancel_scope.cancel()


async def test_order_flow_across_venues_equals_brute_force_live_and_from_storage(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer, client: httpx.AsyncClient) -> None:
        first = max(min(r[0] for r in stored(tmp_path, *k.split("/")[::2], 0, 2**62)) for k in BTC)
        since = first - first % SECOND + SECOND
        await wait_for(
            lambda: all(stored(tmp_path, *k.split("/")[::2], since + 3 * SECOND, 2**62) for k in BTC)
        )
        until = since + 3 * SECOND
        # Storage holds every market's trades up to `until` (each market's arrive in order, and one after it
        # is stored); the live engine, another subscriber of the trade bus, may lag behind storage: wait
        # until it has a bar from `until` on for each market it answers (all but the inverse one).
        engine = daemon.analytics
        assert engine is not None
        live = [key.split("/") for key in BTC if key != "okx/swap/BTC-USD-PERP"]
        await wait_for(lambda: all(engine.bars(ex, symbol, "1s", until, None) for ex, _, symbol in live))
        params = {"asset": "btc", "interval": "1s", "since": str(since // 1000), "until": str(until // 1000)}
        got = (await client.get("/order-flow", params=params)).json()
        assert [m["market"] for m in got["markets"]] == BTC
        assert got["quotes"] == ["USD", "USDC", "USDT"] and "one dollar" in got["quote_note"]
        assert got["conversions"] == [
            {
                "market": "okx/swap/BTC-USD-PERP",
                "rule": "amount*contract_value/price",
                "contract_value": "100",
                "rounding": "half_even, 12 dp",
            },
            {
                "market": "okx/swap/BTC-USDT-PERP",
                "rule": "amount*contract_value",
                "contract_value": "0.01",
                "rounding": None,
            },
        ]
        assert got["sources"]["okx/swap/BTC-USD-PERP"] == "storage"
        assert got["sources"]["bybit/spot/BTC-USDT"] == "live"
        check_order_flow(got, brute_bars(tmp_path, since, until, SECOND))
        # The same range from storage only (no engine) is the same answer.
        ctx = QueryContext(daemon, daemon.ring, None)
        from_storage = await asset_queries.asset_order_flow(ctx, "BTC", None, None, "1s", since, until)
        assert set(from_storage["sources"].values()) == {"storage"}
        assert from_storage["bars"] == got["bars"]
        # The MCP tool's structured result is the route's JSON.
        arguments = {"asset": "BTC", "interval": "1s", "since": since // 1000, "until": until // 1000}
        call = {"name": "get_order_flow", "arguments": arguments}
        result = (await client.post("/mcp", **modern("tools/call", call, name="get_order_flow"))).json()
        assert result["result"]["structuredContent"] == got
        # Narrowed: spot only, and the one inverse market by its quote.
        spot = (await client.get("/order-flow", params=params | {"markets": "spot"})).json()
        assert [m["market"] for m in spot["markets"]] == ["bybit/spot/BTC-USDT", "okx/spot/BTC-USDT"]
        usd = (await client.get("/order-flow", params=params | {"quotes": "USD"})).json()
        assert [m["market"] for m in usd["markets"]] == ["okx/swap/BTC-USD-PERP"] and "quote_note" not in usd
        # Candles side by side and a profile on one grid, volumes in base units.
        candles = (await client.get("/candles", params=params)).json()
        assert sorted(candles["by_venue"]) == BTC
        for bar, candle in zip(got["bars"], candles["candles"], strict=True):
            assert Decimal(candle["volume"]) == Decimal(bar["buy_volume"]) + Decimal(bar["sell_volume"])
        profile = (await client.get("/volume-profile", params=params | {"bin": "5"})).json()
        total = sum((Decimal(b["buy_volume"]) + Decimal(b["sell_volume"]) for b in got["bars"]), Decimal(0))
        assert Decimal(profile["total_volume"]) == total and profile["bin"] == "5"

    await run(tmp_path, body)


async def test_a_venue_that_reconnected_shows_its_gap(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer, client: httpx.AsyncClient) -> None:
        since = max(r[0] for k in BTC for r in stored(tmp_path, *k.split("/")[::2], 0, 2**62))
        assert sim.drop_connections("okx") == 2  # one connection per okx feed; bybit's stay up
        okx = ("BTC-USDT", "BTC-USDT-PERP", "BTC-USD-PERP")
        await wait_for(
            lambda: all(any(r.channel == "trades" for r in daemon.ledger.query("okx", s)) for s in okx)
        )
        got = (await client.get("/order-flow", params={"asset": "BTC", "since": str(since // 1000)})).json()
        venues = {g["venue"] for g in got["gaps"]}
        assert {"okx/spot/BTC-USDT", "okx/swap/BTC-USD-PERP", "okx/swap/BTC-USDT-PERP"} <= venues
        assert not any(v.startswith("bybit/") for v in venues)
        assert all(g["reason"] for g in got["gaps"])
        # A range that ended before the reconnect holds no gap.
        before = {"asset": "BTC", "since": str(since // 1000 - 60_000), "until": str(since // 1000 - 30_000)}
        assert (await client.get("/order-flow", params=before)).json()["gaps"] == []

    await run(tmp_path, body, seed=5)


async def test_bad_asset_parameters_are_400_naming_the_parameter(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer, client: httpx.AsyncClient) -> None:
        cases = [
            ("/order-flow", {"asset": "DOGE"}, "asset", "unknown_asset"),
            ("/order-flow", {"asset": "BTC", "markets": "options"}, "markets", "bad_markets"),
            ("/candles", {"asset": "BTC", "quotes": "USD,EUR"}, "quotes", "bad_quotes"),
            ("/volume-profile", {"asset": "BTC", "quotes": "US$"}, "quotes", "bad_quotes"),
            ("/volume-profile", {"asset": "ETH", "markets": "perp"}, "markets", "no_markets"),
            ("/order-flow", {"asset": "BTC", "exchange": "okx"}, "exchange", "conflicting_parameters"),
            ("/order-flow", {"asset": "BTC", "interval": "7x"}, "interval", "bad_interval"),
        ]
        for path, params, param, code in cases:
            response = await client.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            assert response.json()["error"] == code and response.json()["param"] == param, response.json()
            assert param in response.json()["detail"] or code in ("unknown_asset", "no_markets")
        # The MCP tool answers the same error, naming the argument.
        call = {"name": "get_order_flow", "arguments": {"asset": "DOGE"}}
        result = (await client.post("/mcp", **modern("tools/call", call, name="get_order_flow"))).json()
        assert result["result"]["isError"] is True
        assert "'asset'" in result["result"]["content"][0]["text"]
        with pytest.raises(QueryError) as raised:
            await asset_queries.asset_order_flow(daemon.query, "DOGE")
        assert raised.value.param == "asset" and "BTC" in raised.value.detail and "ETH" in raised.value.detail

    await run(tmp_path, body, seed=6)


DERIVS = {("bybit", "linear"): ("BTC-USDT-PERP",), ("okx", "swap"): ("BTC-USDT-PERP", "BTC-USD-PERP")}
DERIV_KEYS = sorted(f"{ex}/{mk}/{s}" for (ex, mk), symbols in DERIVS.items() for s in symbols)


def okx_base(symbol: str, amount: Decimal, price: Decimal) -> Decimal:
    return to_base(price, amount, symbol)


async def test_liquidations_and_open_interest_merge_across_venues(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=9, rate=10.0, book_rate=20.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = config_for(tmp_path, sim)
        feeds = []
        for (exchange, market), symbols in DERIVS.items():
            ws_url, rest_url = sim.urls(exchange, market)
            feeds.append(
                FeedConfig(
                    exchange=exchange,
                    market=market,
                    symbols=symbols,
                    channels=("trades", "liquidations", "derivatives"),
                    ws_url=ws_url,
                    rest_url=rest_url,
                    stale_timeout_s=3.0,
                )
            )
        daemon = Daemon(attrs.evolve(config, feeds=tuple(feeds)))
        await nursery.start(daemon.run)
        with trio.fail_after(60):
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{daemon.http.port}", timeout=10
            ) as client:

                async def per_market(path: str, key: str) -> dict[str, Any]:
                    exchange, market, symbol = key.split("/")
                    params = {"exchange": exchange, "symbol": symbol, "market": market, "limit": 10_000}
                    return (await client.get(path, params=params)).json()  # type: ignore[no-any-return]

                async def ready() -> bool:
                    for key in DERIV_KEYS:
                        if not (await per_market("/liquidations", key))["liquidations"]:
                            return False
                        rows = (await per_market("/derivatives", key))["rows"]
                        if not any(r["open_interest"] for r in rows) or not any(
                            r["mark_price"] for r in rows
                        ):
                            return False
                    return all(daemon.instruments.loaded(ex, mk) for ex, mk in DERIVS)

                while not await ready():  # noqa: ASYNC110 - no event exists for rows reaching the routes
                    await trio.sleep(0.1)
                # Brute force: every market's own liquidations, amounts converted here; asked first, so
                # rows arriving meanwhile can only make the merged answer longer.
                expected = []
                for key in DERIV_KEYS:
                    exchange, _, symbol = key.split("/")
                    for row in (await per_market("/liquidations", key))["liquidations"]:
                        amount, price = Decimal(row["amount"]), Decimal(row["price"])
                        base = okx_base(symbol, amount, price) if exchange == "okx" else amount
                        expected.append((row["ts"], key, row["side"], row["price"], base, row["amount"]))
                liqs = (await client.get("/liquidations", params={"asset": "BTC", "limit": 10_000})).json()
                got = [
                    (r["ts"], r["market"], r["side"], r["price"], Decimal(r["amount"]), r["venue_amount"])
                    for r in liqs["liquidations"]
                ]
                # The merged list may hold a few more (rows that arrived between the calls): compare what
                # both saw, and that nothing the per-market answers held is missing.
                assert set(expected) <= set(got)
                assert got == sorted(got, key=lambda g: g[0], reverse=True)
                totals = {s: sum((g[4] for g in got if g[2] == s), Decimal(0)) for s in ("buy", "sell")}
                assert {k: Decimal(v) for k, v in liqs["totals"].items()} == totals
                assert {c["market"] for c in liqs["conversions"]} == {
                    "okx/swap/BTC-USD-PERP",
                    "okx/swap/BTC-USDT-PERP",
                }

                derivs = (await client.get("/derivatives", params={"asset": "BTC", "limit": 10_000})).json()
                venues = derivs["venues"]
                assert sorted(venues) == DERIV_KEYS
                oi = Decimal(0)
                weighted = Decimal(0)
                with localcontext() as wide:
                    wide.prec = 200  # the sums exact
                    for key, state in venues.items():
                        exchange, _, symbol = key.split("/")
                        venue_oi, mark = Decimal(state["venue_open_interest"]), Decimal(state["mark_price"])
                        base = okx_base(symbol, venue_oi, mark) if exchange == "okx" else venue_oi
                        assert Decimal(state["open_interest"]) == base, key
                        oi += base
                        weighted += Decimal(state["funding_rate"]) * base
                assert Decimal(derivs["open_interest"]) == oi
                # Funding: the open-interest-weighted mean, divided to 28 significant digits half-even.
                assert Decimal(derivs["funding_rate"]) == Context(prec=28, rounding=ROUND_HALF_EVEN).divide(
                    weighted, oi
                )
                newest = derivs["rows"][0]
                assert newest["open_interest"] == derivs["open_interest"]
                assert set(newest["by_venue"]) == set(DERIV_KEYS)
                # Order-flow bars of the asset carry the liquidations in base units too.
                flow = (await client.get("/order-flow", params={"asset": "BTC", "interval": "1m"})).json()
                in_bars = sum(
                    (Decimal(b["liquidations_buy"]) + Decimal(b["liquidations_sell"]) for b in flow["bars"]),
                    Decimal(0),
                )
                assert in_bars > 0
                # A venue down: its liquidation gaps are in the merged answer, the other venue's are not.
                assert sim.drop_connections("okx") > 0
                await wait_for(
                    lambda: any(
                        r.channel == "liquidations" for r in daemon.ledger.query("okx", "BTC-USD-PERP")
                    )
                )
                merged = (await client.get("/liquidations", params={"asset": "BTC"})).json()
                assert {(g["venue"], g["channel"]) for g in merged["gaps"]} >= {
                    ("okx/swap/BTC-USD-PERP", "liquidations")
                }
                assert not any(g["venue"].startswith("bybit/") for g in merged["gaps"])
            await daemon.stop()
        nursery.cancel_scope.cancel()


def test_a_contract_market_without_metadata_is_left_out_and_named(tmp_path: Path) -> None:
    """Before the instrument metadata of a contract market loads, its units are unknown: the view leaves it
    out (`excluded`, with the reason) instead of summing contracts as if they were BTC."""
    sim = SimServer(SimConfig(seed=3))  # never started: only its URLs are used, nothing connects
    daemon = Daemon(config_for(tmp_path, sim))
    view = asset_queries.asset_view(daemon.query, "BTC", None, None)
    assert [e["market"] for e in view.excluded] == [
        "bybit/linear/BTC-USDT-PERP",
        "okx/swap/BTC-USD-PERP",
        "okx/swap/BTC-USDT-PERP",
    ]
    assert all("not loaded" in e["reason"] for e in view.excluded)
    assert [m.key for m in view.markets] == ["bybit/spot/BTC-USDT", "okx/spot/BTC-USDT"]
