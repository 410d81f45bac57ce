"""Every route's shape over real HTTP, against a daemon fed by the simulator (loopback: reads are open)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from marketflow.api.keys import Scope
from marketflow.model import us_to_iso
from tests.api.conftest import Api, running_api
from tests.conftest import wait_for

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
DECIMAL = re.compile(r"-?\d+(\.\d+)?")


def assert_trade(trade: dict[str, object]) -> None:
    assert set(trade) == {"exchange", "symbol", "id", "price", "amount", "side", "ts", "recv_ts"}
    assert isinstance(trade["price"], str) and DECIMAL.fullmatch(trade["price"])
    assert isinstance(trade["amount"], str) and DECIMAL.fullmatch(trade["amount"])
    assert trade["side"] in ("buy", "sell")
    assert ISO.fullmatch(str(trade["ts"])) and ISO.fullmatch(str(trade["recv_ts"]))


async def test_root_ping_health_status_storage_markets(api: Api) -> None:
    async with api.client() as client:
        root = (await client.get("/")).json()
        assert root["name"] == "marketflow" and "/openapi.json" in root["links"].values()
        assert (await client.get("/ping")).json() == {"pong": True}

        await wait_for(lambda: api.daemon.health().status == "healthy")
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert health.json()["services"]["storage"] == {"state": "running", "ok": True, "problem": None}

        status = (await client.get("/collectors/status")).json()
        names = [a["name"] for a in status["actors"]]
        assert {"storage", "normalizer", "bybit-spot", "bybit-linear"} <= set(names)
        # The server samples message counters every second for msgs/s: until it has two samples.
        await wait_for(lambda: (api.ctx.rates.rate("bybit-spot") or 0) > 0)
        spot = (await client.get("/collectors/status/bybit-spot")).json()
        assert spot["state"] == "running" and spot["circuit"] == "closed" and spot["restarts"] == 0
        assert spot["feed"]["state"] == "streaming"
        assert spot["feed"]["msgs_per_s"] > 0
        assert 0 <= spot["feed"]["last_message_age_s"] < 5
        storage = (await client.get("/collectors/status/storage")).json()
        assert storage["queue"][0]["bus"] == "trades" and "queued_batches" in storage["queue"][0]
        missing = await client.get("/collectors/status/nope")
        assert missing.status_code == 404 and missing.json()["param"] == "name"

        stats = (await client.get("/collectors/storage/stats")).json()
        assert stats["engine"] == "sqlite" and stats["state"] == "running"
        for key in ("rows_written", "batches", "lag_ms", "buffered", "spooled", "errors"):
            assert key in stats

        await wait_for(lambda: api.daemon.instruments.loaded("bybit", "linear"))
        markets = (await client.get("/markets")).json()["markets"]
        assert {
            "exchange": "bybit",
            "market": "linear",
            "symbol": "BTC-USDT-PERP",
            "native": "BTCUSDT",
            "channels": ["trades"],
            "amount_unit": "base",
            "contract_value": None,
            "contract_currency": None,
            "inverse": False,
        } in markets


async def test_trades_from_ring_and_storage(api: Api) -> None:
    async with api.client() as client:
        await wait_for(lambda: len(api.ring.recent("bybit", "BTC-USDT")) >= 20)
        got = (
            await client.get(
                "/collectors/trades", params={"exchange": "bybit", "symbol": "BTC-USDT", "limit": 10}
            )
        ).json()
        assert got["count"] == len(got["trades"]) == 10
        for trade in got["trades"]:
            assert_trade(trade)
            assert trade["symbol"] == "BTC-USDT"
        times = [(t["ts"], t["id"]) for t in got["trades"]]
        assert times == sorted(times, reverse=True)

        # Native spelling with market, epoch-ms and ISO times; the range is honoured.
        newest = api.ring.recent("bybit", "BTC-USDT-PERP", limit=1)[0]
        since_ms = newest.ts // 1000 - 60_000
        got = (
            await client.get(
                "/collectors/trades",
                params={
                    "exchange": "bybit",
                    "symbol": "btcusdt",
                    "market": "linear",
                    "since": since_ms,
                    "until": us_to_iso(newest.ts + 1000),
                },
            )
        ).json()
        assert got["count"] > 0 and {t["symbol"] for t in got["trades"]} == {"BTC-USDT-PERP"}

        # Older than the ring holds: storage answers, merged with the ring, without duplicates.
        await wait_for(lambda: api.ring.complete_from("bybit", "ETH-USDT") is not None)
        api.ring.mark_incomplete()  # as if the ring had lost trades: everything before now is storage's
        await wait_for(  # and new trades come after the mark, so the answer is merged from both
            lambda: bool(
                api.ring.recent("bybit", "ETH-USDT", since=api.ring.complete_from("bybit", "ETH-USDT"))
            )
        )
        got = (
            await client.get(
                "/collectors/trades",
                params={"exchange": "bybit", "symbol": "ETH-USDT", "since": 0, "limit": 10000},
            )
        ).json()
        ids = [t["id"] for t in got["trades"]]
        assert len(ids) == len(set(ids)) == got["count"]
        # It holds trades from before the mark too (the ring only gains trades after it meanwhile, so
        # compared by id, not by count).
        after_mark = api.ring.recent("bybit", "ETH-USDT", since=api.ring.complete_from("bybit", "ETH-USDT"))
        assert set(ids) - {t.id for t in after_mark}


async def test_book_candles_profile_order_flow_gaps(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_api(tmp_path, book=True, markets=("spot",)) as api:
            await wait_for(
                lambda: (v := api.daemon.books.view("bybit", "BTC-USDT")) is not None and v.status == "synced"
            )
            await api.wait_trades(20)
            async with api.client() as client:
                book = (await client.get("/book/bybit/BTC-USDT", params={"depth": 3})).json()
                assert set(book) == {"exchange", "symbol", "bids", "asks", "ts", "status"}
                assert book["status"] == "synced" and len(book["bids"]) == 3 and len(book["asks"]) == 3
                assert all(isinstance(p, str) and isinstance(q, str) for p, q in book["bids"] + book["asks"])
                assert ISO.fullmatch(book["ts"])
                assert (await client.get("/book/bybit/BTCUSDT")).json()["symbol"] == "BTC-USDT"
                assert (await client.get("/book/bybit/DOGE-USDT")).status_code == 404

                params = {"exchange": "bybit", "symbol": "BTC-USDT"}
                candles = (await client.get("/candles", params={**params, "interval": "1m"})).json()[
                    "candles"
                ]
                assert candles and set(candles[0]) == {
                    "start",
                    "open",
                    "high",
                    "low",
                    "close",
                    "volume",
                    "buy_volume",
                    "sell_volume",
                    "trades",
                    "vwap",
                }
                # A range older than live analytics is computed from storage, in the same shape.
                stored = await client.get("/candles", params={**params, "interval": "1m", "since": 0})
                assert stored.status_code == 200 and stored.json()["candles"]
                # An interval analytics does not keep live comes from storage too.
                odd = await client.get("/candles", params={**params, "interval": "7s", "since": 0})
                assert odd.status_code == 200 and odd.json()["candles"][0]["trades"] > 0

                profile = (await client.get("/volume-profile", params={**params, "since": 0})).json()
                assert set(profile) == {"poc", "vah", "val", "value_area", "total_volume", "bins"}
                assert profile["bins"] and profile["poc"] is not None
                flow = (await client.get("/order-flow", params={**params, "footprint": "true"})).json()
                bar = flow["bars"][-1]
                assert {
                    "start",
                    "buy_volume",
                    "sell_volume",
                    "delta",
                    "cvd",
                    "trades",
                    "large_trades",
                    "imbalance",
                    "footprint",
                } <= set(bar)

                api.sim.drop_connections()
                await wait_for(lambda: bool(api.daemon.ledger.query("bybit", "BTC-USDT")))
                gaps = (await client.get("/gaps", params={"exchange": "bybit", "symbol": "BTC-USDT"})).json()
                assert gaps["gaps"] and set(gaps["gaps"][0]) == {
                    "exchange",
                    "symbol",
                    "channel",
                    "start",
                    "end",
                    "open",
                    "reason",
                    "recovered",
                }
                assert (await client.get("/gaps")).json()["gaps"]


async def test_metrics_move_as_trades_arrive(api: Api) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        raise AssertionError(f"{name} {labels} not exposed")

    conn = {"connection": "bybit-spot"}
    moving = (
        ("marketflow_feed_frames_total", conn),
        ("marketflow_decoder_trades_total", conn),
        ("marketflow_trade_receive_lag_seconds_count", {"exchange": "bybit"}),
        ("marketflow_storage_rows_written_total", {}),  # committed on the writer's own schedule
    )
    async with api.client() as client:
        first = await client.get("/metrics")
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
        one = first.text
        with trio.fail_after(10):  # until every one of them has moved (a metric that never does: failure)
            while True:
                second = (await client.get("/metrics")).text
                if all(sample(second, n, **labels) > sample(one, n, **labels) for n, labels in moving):
                    break
                await trio.sleep(0.05)
    assert sample(second, "marketflow_feed_frames_total", **conn) > sample(
        one, "marketflow_feed_frames_total", **conn
    )
    assert sample(second, "marketflow_decoder_trades_total", **conn) > sample(
        one, "marketflow_decoder_trades_total", **conn
    )
    assert sample(second, "marketflow_trade_receive_lag_seconds_count", exchange="bybit") > sample(
        one, "marketflow_trade_receive_lag_seconds_count", exchange="bybit"
    )
    assert sample(second, "marketflow_storage_rows_written_total") > 0
    assert sample(second, "marketflow_bus_queue_depth", bus="trades", subscriber="storage") >= 0
    assert sample(second, "marketflow_decoder_parse_errors_total", **conn) == 0
    for name in (
        "marketflow_feed_reconnects_total",
        "marketflow_feed_pongs_total",
        "marketflow_feed_rejected_subscriptions",
        "marketflow_bus_dropped_items_total",
        "marketflow_storage_spooled",
        "marketflow_storage_buffered",
        "marketflow_storage_batch_latency_seconds",
        "marketflow_decoder_duplicates_total",
        "process_cpu_seconds_total",
        "marketflow_gaps_open",
        "marketflow_heap_trims_total",
        "marketflow_heap_released_bytes_total",
    ):
        assert name in second, name


async def test_health_is_503_when_storage_is_down(api: Api) -> None:
    async with api.client() as client:
        await api.daemon.supervisor.remove_child("storage")
        response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["services"]["storage"]["ok"] is False


async def test_openapi_and_docs(api: Api) -> None:
    async with api.client() as client:
        spec = (await client.get("/openapi.json")).json()
        # The docs pages load scripts from a CDN: off unless http.api_docs = true (see test_trust.py).
        for page in ("/docs", "/redocs", "/scalar"):
            assert (await client.get(page)).status_code == 404, page
        assert "docs" not in (await client.get("/", headers={"Accept": "application/json"})).json()["links"]
    paths = spec["paths"]
    for path in (
        "/collectors/trades",
        "/book/{exchange}/{symbol}",
        "/candles",
        "/volume-profile",
        "/order-flow",
        "/gaps",
        "/metrics",
        "/health",
        "/collectors/status/{name}",
        "/auth/api-keys",
        "/auth/api-keys/{prefix}",
        "/debug/tasks",
    ):
        assert path in paths, path
    params = {p["name"]: p for p in paths["/collectors/trades"]["get"]["parameters"]}
    assert params["exchange"]["required"] is True and params["limit"]["schema"]["maximum"] == 10000
    assert paths["/auth/api-keys"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert Scope.ADMIN > Scope.WRITE > Scope.READ


async def test_server_stops_gracefully_on_request(api: Api) -> None:
    assert api.server.url == f"http://127.0.0.1:{api.server.port}"
    async with api.client() as client:
        assert (await client.get("/ping")).status_code == 200
    api.server.request_stop()
    with trio.fail_after(5):
        await wait_for(lambda: api.server.statistics().state == "stopped")
    async with api.client() as client:
        try:
            await client.get("/ping")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the server still answers after stopping")
