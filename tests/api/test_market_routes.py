"""`/ticker`, `/derivatives`, `/liquidations` and the order-flow bar fields they add, on the simulator:
SPEC §12 shapes, the venue's exact strings, newest first, bad parameters named; `oi_change` and the
liquidation sums per bar against an independent computation (hypothesis), live and from storage alike."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from marketflow.api.market_queries import bar_fields
from marketflow.model import DerivativesTick, Liquidation
from tests.api.conftest import running_api
from tests.conftest import wait_for

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
DEC = re.compile(r"-?\d+(\.\d+)?")
TICKER_KEYS = {
    "exchange", "symbol", "ts", "bid", "bid_size", "ask", "ask_size", "last", "volume_24h", "mark_price",
    "index_price", "funding_rate", "next_funding_time", "open_interest", "open_interest_value",
}  # fmt: skip
ROW_KEYS = {
    "ts", "mark_price", "index_price", "funding_rate", "next_funding_time", "open_interest",
    "open_interest_value",
}  # fmt: skip
LINEAR = ("trades", "ticker", "derivatives", "liquidations")
PERP = {"exchange": "bybit", "symbol": "BTC-USDT-PERP"}


def _sent(api: Any, stream: str) -> list[dict[str, Any]]:
    found = api.sim.book_feed("bybit", "linear", "BTCUSDT").streams.get(stream)
    return [] if found is None else [json.loads(p) for p in found.sent]


async def test_routes_answer_spec_shapes_with_the_venues_strings(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_api(tmp_path, markets=("linear",), channels={"linear": LINEAR}) as api:
            live = api.daemon.market.live
            await wait_for(
                lambda: (
                    len(live.recent_liquidations("bybit", "BTC-USDT-PERP")) >= 4
                    and len(live.recent_samples("bybit", "BTC-USDT-PERP")) >= 3
                ),
                interval=0.05,
            )
            async with api.client() as client:
                ticker = (await client.get("/ticker/bybit/BTC-USDT-PERP")).json()
                assert set(ticker) == TICKER_KEYS
                assert ISO.fullmatch(ticker["ts"]) and ISO.fullmatch(ticker["next_funding_time"])
                sent = _sent(api, "tickers.BTCUSDT")
                for key, field in (
                    ("bid", "bid1Price"),
                    ("mark_price", "markPrice"),
                    ("open_interest", "openInterest"),
                ):
                    # The venue's own strings (fixed decimals, trailing zeros kept).
                    assert ticker[key] in {p["data"][field] for p in sent if field in p["data"]}
                assert (await client.get("/ticker/bybit/BTCUSDT", params={"market": "linear"})).json()[
                    "symbol"
                ] == ("BTC-USDT-PERP")
                missing = await client.get("/ticker/bybit/DOGE-USDT-PERP")
                assert missing.status_code == 404 and missing.json()["param"] == "symbol"

                rows = (await client.get("/derivatives", params={**PERP, "limit": 2})).json()["rows"]
                assert len(rows) == 2 and set(rows[0]) == ROW_KEYS
                assert rows[0]["ts"] > rows[1]["ts"]  # newest first
                assert all(DEC.fullmatch(r["mark_price"]) and r["open_interest_value"] for r in rows)

                liqs = (await client.get("/liquidations", params=PERP)).json()
                assert liqs["count"] == len(liqs["liquidations"]) >= 4
                first = liqs["liquidations"][0]
                assert set(first) == {"exchange", "symbol", "ts", "side", "price", "amount"}
                assert [x["ts"] for x in liqs["liquidations"]] == sorted(
                    (x["ts"] for x in liqs["liquidations"]), reverse=True
                )
                on_wire = {
                    (d["p"], d["v"], "sell" if d["S"] == "Buy" else "buy")
                    for p in _sent(api, "allLiquidation.BTCUSDT")
                    for d in p["data"]
                }
                assert {(x["price"], x["amount"], x["side"]) for x in liqs["liquidations"]} <= on_wire

                bad = await client.get("/liquidations", params={**PERP, "since": "yesterday"})
                assert bad.status_code == 400 and bad.json()["param"] == "since"
                backwards = await client.get("/derivatives", params={**PERP, "since": 2000, "until": 1000})
                assert backwards.status_code == 400 and backwards.json()["param"] == "until"
                assert (await client.get("/derivatives", params={"exchange": "bybit"})).status_code == 400

                # Order-flow bars carry the liquidation sums and the open-interest change, the same from the
                # live engine and from storage. The feed keeps running, so a liquidation may land between the
                # two reads (live ahead of storage by one flush, or storage ahead of an older live read):
                # read both again until they agree on every bar they share.
                keys = ("liquidations_buy", "liquidations_sell", "oi_change")
                mismatch: list[Any] = []
                for _ in range(50):
                    live_flow = (await client.get("/order-flow", params={**PERP, "interval": "1m"})).json()[
                        "bars"
                    ]
                    stored_flow = (
                        await client.get("/order-flow", params={**PERP, "interval": "1m", "since": 0})
                    ).json()["bars"]
                    assert live_flow and {"liquidations_buy", "liquidations_sell", "oi_change"} <= set(
                        live_flow[-1]
                    )
                    by_start = {b["start"]: [b[k] for k in keys] for b in stored_flow}
                    shared = [b for b in live_flow if b["start"] in by_start]
                    mismatch = [(b["start"], [b[k] for k in keys], by_start[b["start"]]) for b in shared
                                if [b[k] for k in keys] != by_start[b["start"]]]  # fmt: skip
                    if shared and not mismatch:
                        break
                    await trio.sleep(0.1)
                assert shared and not mismatch, mismatch
                total = sum(
                    Decimal(b["liquidations_buy"]) + Decimal(b["liquidations_sell"]) for b in live_flow
                )
                assert total > 0


# -- bar fields against an independent computation ---------------------------------------------------------

STEP = 60_000_000
T0 = 1_700_000_040_000_000 - 1_700_000_040_000_000 % STEP
amounts = st.sampled_from(["0.001", "0.010", "1", "2.5", "12.3400"])


@st.composite
def bar_inputs(draw: st.DrawFn) -> tuple[list[int], list[Liquidation], list[DerivativesTick]]:
    count = draw(st.integers(1, 6))
    starts = sorted(draw(st.sets(st.integers(0, 9), min_size=count, max_size=count)))
    starts = [T0 + s * STEP for s in starts]
    span = (T0 - STEP, T0 + 11 * STEP)  # some events fall outside every bar
    sides = st.sampled_from(["buy", "sell"])
    liqs = [
        Liquidation(
            "x", "S", str(i), draw(sides), Decimal("1"), Decimal(draw(amounts)), draw(st.integers(*span)), 0
        )
        for i in range(draw(st.integers(0, 30)))
    ]
    times = draw(st.lists(st.integers(*span), max_size=30, unique=True))
    samples = [
        DerivativesTick("x", "S", ts, ts, open_interest=draw(st.one_of(st.none(), amounts.map(Decimal))))
        for ts in times
    ]
    return starts, liqs, samples


@settings(max_examples=200, deadline=None)
@given(bar_inputs())
def test_bar_fields_equal_an_independent_computation(
    inputs: tuple[list[int], list[Liquidation], list[DerivativesTick]],
) -> None:
    starts, liqs, samples = inputs
    got = bar_fields(starts, STEP, liqs, samples)
    for start, fields in zip(starts, got, strict=True):
        inside = [x for x in liqs if start <= x.ts < start + STEP]
        buy = sum((x.amount for x in inside if x.side == "buy"), Decimal(0))
        sell = sum((x.amount for x in inside if x.side == "sell"), Decimal(0))
        with_oi = sorted(
            (s for s in samples if start <= s.ts < start + STEP and s.open_interest is not None),
            key=lambda s: s.ts,
        )
        change = None if not with_oi else with_oi[-1].open_interest - with_oi[0].open_interest  # type: ignore[operator]
        assert Decimal(fields["liquidations_buy"] or "x") == buy
        assert Decimal(fields["liquidations_sell"] or "x") == sell
        assert (None if fields["oi_change"] is None else Decimal(fields["oi_change"])) == change
