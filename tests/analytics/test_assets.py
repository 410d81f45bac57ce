"""One asset across markets (SPEC §15), property-tested on both storage engines: the aggregated order-flow
bars equal the sum of their `by_venue` parts and an independent brute force over the raw trades with the
contract conversions written out here (spot in base units, linear `amount·value`, inverse
`amount·value/price` to 12 places half-even); the same from the live engine, from storage, and with some
trades only in the trade ring; the volume profile of every market on one grid likewise."""

from __future__ import annotations

import itertools
from collections import defaultdict
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import attrs
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketflow.analytics import AnalyticsEngine
from marketflow.analytics.assets import AssetMarket, base_amount, inverse_base
from marketflow.api.asset_queries import AssetView, view_order_flow, view_volume_profile
from marketflow.api.queries import QueryContext
from marketflow.api.ring import TradeRing
from marketflow.config import AnalyticsConfig, FeedConfig, default_config
from marketflow.daemon import Daemon
from marketflow.model import Contract, Trade, us_to_iso

from .strategies import T0

MIN = 60_000_000
DAY = 86_400_000_000
LARGE = Decimal("50000")
LINEAR = Contract(Decimal("0.01"))
INVERSE = Contract(Decimal("100"), inverse=True)
MARKETS = (
    AssetMarket("bybit", "spot", "BTC-USDT", "BTC", "USDT", False, None),
    AssetMarket("bybit", "linear", "BTC-USDT-PERP", "BTC", "USDT", True, None),
    AssetMarket("okx", "swap", "BTC-USDT-PERP", "BTC", "USDT", True, LINEAR),
    AssetMarket("okx", "swap", "BTC-USD-PERP", "BTC", "USD", True, INVERSE),
)
VIEW = AssetView("BTC", MARKETS, ("USD", "USDC", "USDT"), ())
_examples = itertools.count()


def brute_base(market: AssetMarket, price: Decimal, amount: Decimal) -> Decimal:
    """The conversion as SPEC §15 words it, with a 100-digit division then one rounding."""
    if market.contract is None:
        return amount
    if not market.contract.inverse:
        return amount * market.contract.value
    with localcontext() as ctx:
        ctx.prec = 100
        return (amount * market.contract.value / price).quantize(Decimal("1e-12"), ROUND_HALF_EVEN)


def brute_notional(market: AssetMarket, price: Decimal, amount: Decimal) -> Decimal:
    if market.contract is None:
        return price * amount
    if market.contract.inverse:
        return amount * market.contract.value
    return price * amount * market.contract.value


@st.composite
def trade_sets(draw: st.DrawFn) -> list[tuple[AssetMarket, Trade]]:
    """Trades on the four markets, each market's first at T0 (so the engine holds the whole range)."""
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, 3),
                st.integers(0, 400),
                st.integers(0, 3000),
                st.sampled_from(["buy", "sell"]),
                st.sampled_from([0, 1, 239, 240, 241, 719, 720, 1199]) | st.integers(0, 1199),
            ),
            max_size=60,
        )
    )
    rows = [(i, 0, 7, "buy", 0) for i in range(4)] + rows
    out = []
    for n, (index, tick, units, side, slot) in enumerate(rows):
        market = MARKETS[index]
        price = Decimal(6_511_400 + 7 * tick).scaleb(-2)
        amount = Decimal(units).scaleb(-4) if market.contract is None else Decimal(units).scaleb(-1)
        ts = T0 + slot * 250_000
        trade = Trade(market.exchange, market.symbol, f"{n}", price, amount, side, ts, ts)  # type: ignore[arg-type]
        out.append((market, trade))
    return out


def brute_order_flow(trades: list[tuple[AssetMarket, Trade]], since: int, until: int) -> list[dict[str, Any]]:
    per: dict[int, dict[str, list[Any]]] = defaultdict(dict)
    for market, t in trades:
        if t.amount <= 0 or not since <= t.ts < until:
            continue
        start = t.ts - t.ts % MIN
        cell = per[start].setdefault(market.key, [Decimal(0), Decimal(0), 0, 0])
        cell[0 if t.side == "buy" else 1] += brute_base(market, t.price, t.amount)
        cell[2] += 1
        cell[3] += brute_notional(market, t.price, t.amount) >= LARGE
    bars = []
    cvd = Decimal(0)
    for start in sorted(per):
        buy = sum((c[0] for c in per[start].values()), Decimal(0))
        sell = sum((c[1] for c in per[start].values()), Decimal(0))
        cvd += buy - sell
        bars.append(
            {
                "start": us_to_iso(start),
                "buy_volume": buy,
                "sell_volume": sell,
                "delta": buy - sell,
                "cvd": cvd,
                "trades": sum(c[2] for c in per[start].values()),
                "large_trades": sum(c[3] for c in per[start].values()),
                "by_venue": {k: (c[0], c[1]) for k, c in per[start].items()},
            }
        )
    return bars


def as_numbers(bars: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answer's figures as numbers (spellings differ by engine: 0.0200 and 0.02 are one amount)."""
    out = []
    for bar in bars:
        venues = bar["by_venue"]
        # Aggregated == the sum of the per-venue parts.
        assert Decimal(bar["buy_volume"]) == sum(
            (Decimal(v["buy_volume"]) for v in venues.values()), Decimal(0)
        )
        assert Decimal(bar["sell_volume"]) == sum(
            (Decimal(v["sell_volume"]) for v in venues.values()), Decimal(0)
        )
        for v in venues.values():
            assert Decimal(v["delta"]) == Decimal(v["buy_volume"]) - Decimal(v["sell_volume"])
        out.append(
            {
                "start": bar["start"],
                **{k: Decimal(bar[k]) for k in ("buy_volume", "sell_volume", "delta", "cvd")},
                "trades": bar["trades"],
                "large_trades": bar["large_trades"],
                "by_venue": {
                    k: (Decimal(v["buy_volume"]), Decimal(v["sell_volume"])) for k, v in venues.items()
                },
            }
        )
    return out


def daemon_for(url: str) -> Daemon:
    base = default_config(env={})
    feeds = tuple(
        FeedConfig(exchange=m.exchange, market=m.market, symbols=(m.symbol,), channels=("trades",))
        for m in MARKETS
    )
    analytics = AnalyticsConfig(candle_intervals=("1m",), large_trade_notional=LARGE)
    return Daemon(
        attrs.evolve(base, feeds=feeds, analytics=analytics, storage=attrs.evolve(base.storage, url=url))
    )


PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(trade_sets(), st.lists(st.booleans(), max_size=70), st.sampled_from([(0, 5), (1, 3), (0, 1)]))
def test_aggregated_bars_equal_per_venue_sums_and_brute_force(
    store_url: str, trades: list[tuple[AssetMarket, Trade]], stored_flags: list[bool], span: tuple[int, int]
) -> None:
    # Each example lives on its own day, so examples share one database without meeting.
    shift = next(_examples) * DAY
    trades = [(m, msgspec.structs.replace(t, ts=t.ts + shift, recv_ts=t.ts + shift)) for m, t in trades]
    since, until = T0 + shift + span[0] * MIN, T0 + shift + span[1] * MIN
    raw = [t for _, t in trades]
    stored = [t for i, t in enumerate(raw) if i >= len(stored_flags) or stored_flags[i]]

    async def main() -> None:
        daemon = daemon_for(store_url)
        await daemon.store.open()
        try:
            if stored:
                await daemon.store.write_trades(stored)
            ring = TradeRing(None, 100_000)
            ring.add(raw)
            engine = AnalyticsEngine(
                None,  # type: ignore[arg-type]  # queries only, never run
                daemon.config.analytics,
                contracts={(m.exchange, m.symbol): m.contract for m in MARKETS if m.contract is not None},
            )
            engine.ingest(raw)
            expected = brute_order_flow(trades, since, until)
            answers = {}
            for name, ctx in (
                ("live", QueryContext(daemon, ring, engine)),
                ("storage", QueryContext(daemon, ring, None)),
            ):
                body = await view_order_flow(ctx, VIEW, "1m", MIN, since, until)
                assert as_numbers(body["bars"]) == expected, name
                answers[name] = body
            assert answers["live"]["sources"]["bybit/spot/BTC-USDT"] == "live"
            assert set(answers["storage"]["sources"].values()) == {"storage"}
            # The volume profile on one grid, against the brute force per bin.
            size = Decimal("0.25")
            profile = await view_volume_profile(QueryContext(daemon, ring, None), VIEW, since, until, size)
            bins: dict[Decimal, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
            for market, t in trades:
                if t.amount > 0 and since <= t.ts < until:
                    edge = (t.price / size).to_integral_value(ROUND_FLOOR) * size
                    bins[edge][0 if t.side == "buy" else 1] += brute_base(market, t.price, t.amount)
            got = {
                Decimal(b["price"]): [Decimal(b["buy_volume"]), Decimal(b["sell_volume"])]
                for b in profile["bins"]
            }
            assert {p: v for p, v in got.items() if any(v)} == dict(bins)
            total = sum((sum(v) for v in bins.values()), Decimal(0))
            assert Decimal(profile["total_volume"]) == total
        finally:
            await daemon.store.close()

    trio.run(main)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 10**9).map(lambda n: Decimal(n).scaleb(-3)),
    st.integers(1, 10**7).map(lambda n: Decimal(n).scaleb(-2)),
    st.sampled_from([Decimal(1), Decimal(10), Decimal(100)]),
)
def test_inverse_conversion_rounds_half_even_at_12_places(
    price: Decimal, amount: Decimal, value: Decimal
) -> None:
    expected = brute_base(MARKETS[3], price, amount) if value == 100 else None
    got = inverse_base(price, amount, value)
    assert got.as_tuple().exponent == -12
    # |got - amount·value/price| ≤ half a unit of the 12th place, tie to even.
    with localcontext() as ctx:
        ctx.prec = 200
        error = abs(got - amount * value / price)
    assert error <= Decimal("0.5e-12")
    if error == Decimal("0.5e-12"):
        assert int(got.as_tuple().digits[-1]) % 2 == 0
    if expected is not None:
        assert got == expected


@pytest.mark.parametrize(
    ("price", "amount", "value", "expected"),
    [
        (Decimal("8"), Decimal("1"), Decimal("1"), "0.125000000000"),
        # 1/3·10⁻¹¹ territory: 100/3 = 33.333…, rounds down at the 12th place.
        (Decimal("3"), Decimal("1"), Decimal("100"), "33.333333333333"),
        # An exact tie at the 13th place rounds to the even 12th digit: 0.0000000000005 → 0.
        (Decimal("2000000000000"), Decimal("1"), Decimal("1"), "0.000000000000"),
        (Decimal("2000000000000"), Decimal("3"), Decimal("1"), "0.000000000002"),
    ],
)
def test_inverse_conversion_examples(price: Decimal, amount: Decimal, value: Decimal, expected: str) -> None:
    assert format(inverse_base(price, amount, value), "f") == expected
    assert base_amount(price, amount, Contract(value, inverse=True)) == Decimal(expected)
    assert base_amount(price, amount, Contract(value)) == amount * value
    assert base_amount(price, amount, None) == amount
