"""Stored-range analytics on both engines against the from-trades functions, the brute-force references and
the live engine fed the same trades: JSON-equal, to the last digit.

PostgreSQL aggregates in SQL, SQLite streams trades into the Python accumulators (`analytics/stored.py`);
both must give what the pure functions give over the same trades in (ts, id) order — the order storage
knows — including the trade ring's not-yet-stored trades merged in. Each hypothesis example writes its
trades under a fresh symbol of one database per test.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from marketflow.analytics import (
    AnalyticsEngine,
    NotLiveError,
    compute_candles_from_trades,
    compute_order_flow_from_trades,
    compute_volume_profile_from_trades,
    parse_interval,
)
from marketflow.analytics import stored as stored_module
from marketflow.analytics.stored import (
    RangeTooLargeError,
    stored_bars,
    stored_candles,
    stored_order_flow,
    stored_volume_profile,
)
from marketflow.api.ring import TradeRing
from marketflow.config import AnalyticsConfig
from marketflow.model import Trade
from marketflow.storage import open_store
from marketflow.storage.writer import TradeStore

from . import brute
from .strategies import EXCHANGE, T0

MIN = 60_000_000
VALUE_AREA = Decimal("0.70")
_symbols = itertools.count()

# price(tick, form) per family, amount(units), the bins tried: tiny and huge prices, 8-decimal amounts, and
# one family that writes the same price with 1 or 2 decimals ("65114.5" and "65114.50").
FAMILIES: dict[str, tuple[Callable[[int, bool], Decimal], Callable[[int], Decimal], tuple[Decimal, ...]]] = {
    "btc": (
        lambda tick, _: Decimal(6_511_400 + 5 * tick).scaleb(-2),
        lambda units: Decimal(units).scaleb(-8),
        (Decimal("0.25"), Decimal("1")),
    ),
    "tiny": (
        lambda tick, _: Decimal(1000 + tick).scaleb(-8),
        lambda units: Decimal(units * 1000),
        (Decimal("0.00000002"), Decimal("0.0000001")),
    ),
    "huge": (
        lambda tick, _: Decimal(1_234_567_890_120 + tick).scaleb(-1),
        lambda units: Decimal(units).scaleb(-3),
        (Decimal("0.5"), Decimal("2")),
    ),
    "mixed": (
        lambda tick, two: (
            Decimal((651_140 + tick) * 10).scaleb(-2) if two else Decimal(651_140 + tick).scaleb(-1)
        ),
        lambda units: Decimal(units).scaleb(-2),
        (Decimal("0.1"), Decimal("0.5")),
    ),
}
ID_FORMS = ("{}", "a-{}", "B{}", "~{}", "{}0")
EDGES = [0, 1, 239, 240, 241, 480, 719, 720]  # × 250 ms: minute edges and their neighbours
BOUNDS = [T0, T0 + 30_000_000, T0 + MIN, T0 + MIN + 1, T0 + 2 * MIN - 1, T0 + 2 * MIN, T0 + 5 * MIN]


@st.composite
def trade_sets(draw: st.DrawFn) -> tuple[str, list[Trade]]:
    """(family, trades): ties in price and time, zero amounts, both sides, trades on and next to bar edges."""
    family = draw(st.sampled_from(sorted(FAMILIES)))
    price_of, amount_of, _ = FAMILIES[family]
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, 30),
                st.booleans(),
                st.integers(0, 60),
                st.sampled_from(["buy", "sell"]),
                st.sampled_from(EDGES) | st.integers(0, 720),
                st.sampled_from([0, 0, 0, -1, 1]),
                st.sampled_from(ID_FORMS),
            ),
            min_size=1,
            max_size=50,
        )
    )
    symbol = f"S{next(_symbols)}-USDT"
    trades = []
    ids: set[str] = set()
    for index, (tick, two, units, side, slot, nudge, form) in enumerate(rows):
        ts = max(T0, T0 + slot * 250_000 + nudge)
        trade_id = form.format(index)
        if trade_id in ids:  # "{}0" of 1 is "{}" of 10: a market's trade ids are unique (storage keeps one)
            continue
        ids.add(trade_id)
        trades.append(
            Trade(EXCHANGE, symbol, trade_id, price_of(tick, two), amount_of(units), side, ts, ts)  # type: ignore[arg-type]
        )
    return family, trades


def by_ts_id(trades: Sequence[Trade]) -> list[Trade]:
    return sorted(trades, key=lambda t: (t.ts, t.id))


def median_notional(trades: Sequence[Trade]) -> Decimal:
    """A large-trade threshold that some trades meet exactly and some miss."""
    notionals = sorted(t.price * t.amount for t in trades if t.amount > 0) or [Decimal(1)]
    return notionals[len(notionals) // 2]


def ring_of(trades: Sequence[Trade]) -> TradeRing:
    ring = TradeRing(None, 100_000)
    if trades:
        ring.add(list(trades))
    return ring


def run_with_store(url: str, body: Callable[[TradeStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = open_store(url)
        await store.open()
        try:
            await body(store)
        finally:
            await store.close()

    trio.run(main)


async def write(store: TradeStore, trades: Sequence[Trade]) -> None:
    if trades:
        await store.write_trades(list(trades))


def live_engine(trades: list[Trade], symbol: str, size: Decimal, large: Decimal) -> AnalyticsEngine:
    config = AnalyticsConfig(
        candle_intervals=("1m", "5m"), large_trade_notional=large, bin_size={symbol: size}
    )
    engine = AnalyticsEngine(None, config)  # type: ignore[arg-type]  # queries only, never run
    engine.ingest(trades)
    return engine


STORED = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@STORED
@given(
    trade_sets(),
    st.lists(st.booleans(), max_size=50),
    st.lists(st.booleans(), max_size=50),
    st.data(),
)
def test_stored_ranges_equal_from_trades_live_and_brute_force(
    store_url: str,
    family_trades: tuple[str, list[Trade]],
    unstored: list[bool],
    in_ring: list[bool],
    data: st.DataObject,
) -> None:
    family, trades = family_trades
    symbol = trades[0].symbol
    ordered = by_ts_id(trades)
    size = data.draw(st.sampled_from(FAMILIES[family][2]), "bin")
    interval = data.draw(st.sampled_from(["1m", "5m", "7s"]), "interval")
    since = data.draw(st.sampled_from(BOUNDS[:4]), "since")
    until = data.draw(st.none() | st.sampled_from([b for b in BOUNDS if b > since]), "until")
    limit = data.draw(st.none() | st.integers(1, 3), "limit")
    step = parse_interval(interval)
    large = median_notional(trades)
    # Storage holds some trades; the ring holds the rest (not yet stored) and may hold stored ones too.
    held = [t for i, t in enumerate(trades) if not (i < len(unstored) and unstored[i])]
    ring_only = [t for t in trades if t not in held]
    ring = ring_of(ring_only + [t for i, t in enumerate(held) if i < len(in_ring) and in_ring[i]])
    event(f"family {family}; ring-only trades: {'some' if ring_only else 'none'}")

    expected_candles = compute_candles_from_trades(ordered, step, since=since, until=until, limit=limit)
    chosen = brute.candles(ordered, step, since, until)
    assert expected_candles == {"candles": chosen[:limit] if limit is not None else chosen}
    expected_flow = compute_order_flow_from_trades(
        ordered, step, since=since, until=until, large_trade_notional=large, footprint=True, bin=size
    )
    assert expected_flow == {"bars": brute.order_flow(ordered, step, large, since, until, size)}
    plain_flow = compute_order_flow_from_trades(
        ordered, step, since=since, until=until, large_trade_notional=large
    )
    expected_profile = compute_volume_profile_from_trades(
        ordered, since=since, until=until, bin=size, value_area=VALUE_AREA
    )
    assert expected_profile == brute.profile(ordered, size, VALUE_AREA, since, until)
    default_profile = compute_volume_profile_from_trades(
        ordered, since=since, until=until, value_area=VALUE_AREA
    )

    if interval != "7s":  # a configured interval: the live engine fed the same trades says the same
        engine = live_engine(ordered, symbol, size, large)
        assert engine.candles(EXCHANGE, symbol, interval, since, until, limit) == expected_candles
        assert engine.order_flow(EXCHANGE, symbol, interval, since, until, footprint=True) == expected_flow
        try:
            assert engine.volume_profile(EXCHANGE, symbol, since, until) == expected_profile
        except NotLiveError:
            event("profile not live")

    async def check(store: TradeStore) -> None:
        await write(store, held)
        got = await stored_candles(store, ring, EXCHANGE, symbol, step, since, until, limit)
        assert got == expected_candles
        got = await stored_order_flow(
            store, ring, EXCHANGE, symbol, step, since, until, large_trade_notional=large, footprint_bin=size
        )
        assert got == expected_flow
        got = await stored_order_flow(
            store, ring, EXCHANGE, symbol, step, since, until, large_trade_notional=large
        )
        assert got == plain_flow
        got = await stored_volume_profile(
            store, ring, EXCHANGE, symbol, since, until, bin=size, value_area=VALUE_AREA
        )
        assert got == expected_profile
        got = await stored_volume_profile(
            store, ring, EXCHANGE, symbol, since, until, bin=None, value_area=VALUE_AREA
        )
        assert got == default_profile

    run_with_store(store_url, check)


def t(index: int, price: str, amount: str, side: str, ts: int, symbol: str = "E-USDT", id: str = "") -> Trade:
    return Trade(EXCHANGE, symbol, id or str(index), Decimal(price), Decimal(amount), side, ts, ts)  # type: ignore[arg-type]


EDGE_CASES: dict[str, list[Trade]] = {
    "single trade": [t(1, "65114.20", "0.00000001", "buy", T0 + 5)],
    "only zero amounts": [t(1, "100", "0", "buy", T0), t(2, "101", "0.000", "sell", T0 + MIN)],
    "one ts, ids decide open and close": [
        t(0, "101", "1", "sell", T0 + 7, id="b"),
        t(1, "100", "1", "buy", T0 + 7, id="a-9"),
        t(2, "102", "1", "buy", T0 + 7, id="B"),
        t(3, "103", "2", "sell", T0 + 7, id="~"),
    ],
    "bar edges and empty bars between": [
        t(0, "10.5", "1.5", "buy", T0),
        t(1, "10.0", "2", "sell", T0 + MIN - 1),
        t(2, "10.25", "0.5", "buy", T0 + MIN),
        t(3, "11", "1", "sell", T0 + 4 * MIN),
    ],
    "big and tiny numbers": [
        t(0, "123456789012345678.12345678", "0.00000001", "buy", T0 + 1),
        t(1, "0.00000001", "98765432109876543210", "sell", T0 + 2),
        t(2, "123456789012345678.1", "100000000", "sell", T0 + MIN + 3),
    ],
    "same price, two spellings": [
        t(0, "100.5", "1", "buy", T0 + 1),
        t(1, "100.50", "1", "sell", T0 + 2),
        t(2, "99.0", "1", "buy", T0 + 3),
        t(3, "99", "1", "buy", T0 + 4),
    ],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_on_both_engines(store_url: str, case: str) -> None:
    trades = [attr_symbol(trade, f"E{sorted(EDGE_CASES).index(case)}-USDT") for trade in EDGE_CASES[case]]
    symbol = trades[0].symbol
    ordered = by_ts_id(trades)
    large, size = Decimal("1"), Decimal("0.5")
    engine = live_engine(ordered, symbol, size, large)

    async def check(store: TradeStore) -> None:
        await write(store, trades)
        for interval in ("1m", "5m"):
            step = parse_interval(interval)
            candles = await stored_candles(store, None, EXCHANGE, symbol, step, T0, None, None)
            assert candles == compute_candles_from_trades(ordered, step, since=T0)
            assert candles == engine.candles(EXCHANGE, symbol, interval, T0)
            flow = await stored_order_flow(
                store, None, EXCHANGE, symbol, step, T0, None, large_trade_notional=large, footprint_bin=size
            )
            assert flow == compute_order_flow_from_trades(
                ordered, step, since=T0, large_trade_notional=large, footprint=True, bin=size
            )
            assert flow == engine.order_flow(EXCHANGE, symbol, interval, T0, footprint=True)
        profile = await stored_volume_profile(
            store, None, EXCHANGE, symbol, T0, None, bin=None, value_area=VALUE_AREA
        )
        assert profile == compute_volume_profile_from_trades(ordered, since=T0, value_area=VALUE_AREA)

    run_with_store(store_url, check)


def attr_symbol(trade: Trade, symbol: str) -> Trade:
    return Trade(trade.exchange, symbol, trade.id, trade.price, trade.amount, trade.side, trade.ts, trade.ts)


def test_the_ring_breaks_time_ties_by_id_against_storage(store_url: str) -> None:
    """A not-yet-stored trade at the same ts as stored ones opens or closes the bar only by its id."""
    stored = [t(0, "100", "1", "buy", T0 + 10, id="5"), t(1, "101", "1", "buy", T0 + 10, id="7")]
    unstored = [t(2, "99", "1", "sell", T0 + 10, id="3"), t(3, "98", "1", "sell", T0 + 10, id="6")]
    everything = by_ts_id(stored + unstored)

    async def check(store: TradeStore) -> None:
        await write(store, stored)
        got = await stored_candles(
            store, ring_of(unstored + stored[:1]), EXCHANGE, "E-USDT", MIN, T0, None, None
        )
        assert got == compute_candles_from_trades(everything, MIN, since=T0)
        assert got["candles"][0]["open"] == "99" and got["candles"][0]["close"] == "101"

    run_with_store(store_url, check)


def test_a_late_trade_changes_only_its_bar(store_url: str) -> None:
    trades = [t(i, str(100 + i % 7), "1", "buy" if i % 3 else "sell", T0 + i * 20_000_000) for i in range(30)]
    late = t(99, "90", "2.5", "sell", T0 + 3 * MIN + 5)

    async def check(store: TradeStore) -> None:
        await write(store, trades)
        before = await stored_candles(store, None, EXCHANGE, "E-USDT", MIN, T0, None, None)
        flow_before = await stored_order_flow(
            store, None, EXCHANGE, "E-USDT", MIN, T0, None, large_trade_notional=large
        )
        await write(store, [late])  # a backfilled trade of a bar long closed
        after = await stored_candles(store, None, EXCHANGE, "E-USDT", MIN, T0, None, None)
        flow_after = await stored_order_flow(
            store, None, EXCHANGE, "E-USDT", MIN, T0, None, large_trade_notional=large
        )
        changed = [
            i for i, (a, b) in enumerate(zip(before["candles"], after["candles"], strict=True)) if a != b
        ]
        assert changed == [3]
        assert after["candles"][3]["low"] == "90" and after["candles"][3]["trades"] == 4
        assert after == compute_candles_from_trades(by_ts_id([*trades, late]), MIN, since=T0)
        bars_before, bars_after = flow_before["bars"], flow_after["bars"]
        assert bars_before[:3] == bars_after[:3]
        assert bars_after[3]["sell_volume"] != bars_before[3]["sell_volume"]
        # Later bars change only in their running cvd.
        for a, b in zip(bars_before[4:], bars_after[4:], strict=True):
            assert {k: v for k, v in a.items() if k != "cvd"} == {k: v for k, v in b.items() if k != "cvd"}
            assert Decimal(b["cvd"]) == Decimal(a["cvd"]) - Decimal("2.5")

    large = Decimal("150")
    run_with_store(store_url, check)


def test_ranges_are_bounded_by_bars_and_bins_not_trades(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trades = [t(i, f"{100 + i}.5", "1", "buy", T0 + i * 1_000_000) for i in range(12)]
    monkeypatch.setattr(stored_module, "MAX_BARS", 10)
    monkeypatch.setattr(stored_module, "MAX_PROFILE_BINS", 10)
    monkeypatch.setattr(stored_module, "MAX_FOOTPRINT_CELLS", 10)

    async def check(store: TradeStore) -> None:
        await write(store, trades)
        with pytest.raises(RangeTooLargeError) as bars:
            await stored_order_flow(
                store, None, EXCHANGE, "E-USDT", 1_000_000, T0, None, large_trade_notional=Decimal(1)
            )
        assert bars.value.param == "since" and "more than 10 bars" in bars.value.detail
        with pytest.raises(RangeTooLargeError) as bins:
            await stored_volume_profile(
                store, None, EXCHANGE, "E-USDT", T0, None, bin=Decimal("0.5"), value_area=VALUE_AREA
            )
        assert bins.value.param == "bin"
        with pytest.raises(RangeTooLargeError) as cells:
            await stored_order_flow(
                store,
                None,
                EXCHANGE,
                "E-USDT",
                MIN,
                T0,
                None,
                large_trade_notional=Decimal(1),
                footprint_bin=Decimal("0.5"),
            )
        assert cells.value.param == "bin"
        # Candles want the first `limit` bars: never an error, the scan stops there.
        got = await stored_candles(store, None, EXCHANGE, "E-USDT", 1_000_000, T0, None, 3)
        assert got == compute_candles_from_trades(trades, 1_000_000, since=T0, limit=3)
        assert (
            len(
                (
                    await stored_volume_profile(
                        store, None, EXCHANGE, "E-USDT", T0, None, bin=Decimal(10), value_area=VALUE_AREA
                    )
                )["bins"]
            )
            == 2
        )

    run_with_store(store_url, check)


BIG = 210_000


def test_more_than_200k_trades_aggregate_per_bar(store_url: str) -> None:
    """No cap on trades: 210k trades in one range; PostgreSQL sends one row per bar or cell, not per trade."""
    trades = [
        Trade(
            EXCHANGE,
            "BIG-USDT",
            str(i),
            Decimal(65_000 + i % 97).scaleb(-1),
            Decimal(1 + i % 13).scaleb(-3),
            "buy" if i % 3 else "sell",
            T0 + i * 1000,
            T0 + i * 1000,
        )
        for i in range(BIG)
    ]
    step = MIN  # 210 s of trades: 4 bars
    fetched: list[int] = []

    async def check(store: TradeStore) -> None:
        for low in range(0, BIG, 50_000):
            await store.write_trades(trades[low : low + 50_000])
        fetch = getattr(store, "fetch", None)
        if fetch is not None:

            async def counting(sql: str, params: list[Any]) -> list[Any]:
                rows: list[Any] = await fetch(sql, params)
                fetched.append(len(rows))
                return rows

            store.fetch = counting  # type: ignore[attr-defined]
        flow = await stored_order_flow(
            store,
            None,
            EXCHANGE,
            "BIG-USDT",
            step,
            T0,
            None,
            large_trade_notional=Decimal("0.05"),
            footprint_bin=Decimal(1),
        )
        assert flow == compute_order_flow_from_trades(
            trades, step, since=T0, large_trade_notional=Decimal("0.05"), footprint=True, bin=Decimal(1)
        )
        bars = await stored_bars(store, None, EXCHANGE, "BIG-USDT", T0, None, step)
        assert sum(bar.trades for bar in bars) == BIG and len(bars) == 4
        profile = await stored_volume_profile(
            store, None, EXCHANGE, "BIG-USDT", T0, None, bin=Decimal(1), value_area=VALUE_AREA
        )
        assert profile["total_volume"] == format(sum(t.amount for t in trades), "f")
        if fetch is not None:
            assert fetched and max(fetched) <= 4 * 11  # bars, cells (≤ 10 bins a bar), ids: never per trade

    run_with_store(store_url, check)


def test_integral_amounts_keep_their_exponent_on_both_engines(store_url: str) -> None:
    """asyncpg reads NUMERIC 120000 as Decimal('1.2E+5'); stored trades and stored-range ratios must keep
    the exchange's exponent (0), or a vwap gets extra digits (0.000010000000 instead of 0.00001000)."""
    trades = [
        Trade(EXCHANGE, "INT-USDT", str(i), Decimal("0.00001000"), Decimal("20000"), "buy", T0 + i, T0 + i)
        for i in range(6)
    ]

    async def body(store: TradeStore) -> None:
        await store.write_trades(trades)
        stored = await store.query_trades(EXCHANGE, "INT-USDT")  # type: ignore[attr-defined]
        assert {(t.amount.as_tuple().exponent, str(t.amount)) for t in stored} == {(0, "20000")}
        got = await stored_candles(store, None, EXCHANGE, "INT-USDT", MIN, T0 - T0 % MIN, None, None)
        assert got["candles"][0]["vwap"] == "0.00001000"
        assert got["candles"][0]["volume"] == "120000"

    run_with_store(store_url, body)


def test_a_ring_trade_before_the_stored_ones_at_an_equal_price_gives_its_spelling(store_url: str) -> None:
    """Hypothesis found it (family "mixed"): the ring's unstored trade comes first by (ts, id) at the price
    the stored one has written with another decimal: high and low are the first one's spelling, as the
    from-trades function and the live engine give it."""
    stored_one = t(1, "65114.00", "0.01", "buy", T0, symbol="R-USDT")
    ring_one = t(0, "65114.0", "0.01", "sell", T0, symbol="R-USDT")
    ordered = by_ts_id([stored_one, ring_one])

    async def check(store: TradeStore) -> None:
        await write(store, [stored_one])
        got = await stored_candles(store, ring_of([ring_one]), EXCHANGE, "R-USDT", MIN, T0, None, None)
        assert got == compute_candles_from_trades(ordered, MIN, since=T0)
        assert [(c["open"], c["high"], c["low"], c["close"]) for c in got["candles"]] == [
            ("65114.0", "65114.0", "65114.0", "65114.00")
        ]

    run_with_store(store_url, check)


# Stored: the bar's first trade, the first at its extreme (high "65114.00" or low "65110.00") at T0 + 20, a
# last one. Unstored: the same extreme spelled "65114.0" / "65110.0" in the middle of the bar, before or
# after the stored one at it (the first by (ts, id) of equal prices gives the spelling), or before it and
# then beaten by another unstored trade.
MIDDLE_CASES: dict[str, tuple[list[str], list[tuple[str, int]], tuple[str, str]]] = {
    "high, ring before the stored extreme": (
        ["65110.00", "65114.00", "65112.00"],
        [("65114.0", 10)],
        ("65114.0", "65110.00"),
    ),
    "high, ring after the stored extreme": (
        ["65110.00", "65114.00", "65112.00"],
        [("65114.0", 30)],
        ("65114.00", "65110.00"),
    ),
    "high, ring before the stored extreme, then a higher one": (
        ["65110.00", "65114.00", "65112.00"],
        [("65114.0", 10), ("65115.0", 30)],
        ("65115.0", "65110.00"),
    ),
    "low, ring before the stored extreme": (
        ["65118.00", "65110.00", "65112.00"],
        [("65110.0", 10)],
        ("65118.00", "65110.0"),
    ),
    "low, ring after the stored extreme": (
        ["65118.00", "65110.00", "65112.00"],
        [("65110.0", 30)],
        ("65118.00", "65110.00"),
    ),
    "low, ring before the stored extreme, then a lower one": (
        ["65118.00", "65110.00", "65112.00"],
        [("65110.0", 10), ("65109.0", 30)],
        ("65118.00", "65109.0"),
    ),
}


@pytest.mark.parametrize("case", list(MIDDLE_CASES))
def test_a_ring_trade_in_the_middle_of_a_bar_at_its_extreme_spelled_otherwise(
    store_url: str, case: str
) -> None:
    """Hypothesis could find it (family "mixed"): an unstored trade after the bar's first stored one, at the
    price of its stored high or low written with another decimal, gives the bar its spelling exactly when it
    comes before the first stored trade at that price by (ts, id) — as the from-trades function, the brute
    force reference and the live engine give it."""
    stored_prices, ring_prices, (high, low) = MIDDLE_CASES[case]
    symbol = "M-USDT"
    stored = [t(i, p, "0.01", "buy", T0 + 20 * i, symbol=symbol) for i, p in enumerate(stored_prices)]
    unstored = [t(10 + i, p, "0.02", "sell", T0 + dt, symbol=symbol) for i, (p, dt) in enumerate(ring_prices)]
    ordered = by_ts_id(stored + unstored)
    large = median_notional(ordered)

    async def check(store: TradeStore) -> None:
        await write(store, stored)
        ring = ring_of(unstored + stored[:1])
        got = await stored_candles(store, ring, EXCHANGE, symbol, MIN, T0, None, None)
        assert got == compute_candles_from_trades(ordered, MIN, since=T0)
        assert [(c["high"], c["low"]) for c in got["candles"]] == [(high, low)]
        flow = await stored_order_flow(
            store, ring, EXCHANGE, symbol, MIN, T0, None, large_trade_notional=large
        )
        want = compute_order_flow_from_trades(ordered, MIN, large_trade_notional=large, since=T0)
        assert flow == want

    run_with_store(store_url, check)
