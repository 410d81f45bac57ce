from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketflow.analytics import (
    book_stats,
    book_stats_json,
    depth_imbalance,
    microprice,
    mid,
    mid_divergence_bps,
    spread,
)
from marketflow.model import Level


def levels(*pairs: tuple[str, str]) -> list[Level]:
    return [(Decimal(p), Decimal(q)) for p, q in pairs]


BIDS = levels(("65114.20", "1.5"), ("65114.10", "0.5"), ("65113.00", "2"))
ASKS = levels(("65114.30", "0.5"), ("65114.40", "1"), ("65115.00", "3"))


def test_touch_statistics_are_exact() -> None:
    assert spread(BIDS, ASKS) == Decimal("0.10")
    assert str(mid(BIDS, ASKS)) == "65114.25"
    # (65114.20 * 0.5 + 65114.30 * 1.5) / 2.0 = 130228.55 / 2.0
    assert str(microprice(BIDS, ASKS)) == "65114.275"
    assert str(depth_imbalance(BIDS, ASKS, 1)) == "0.5"  # (1.5 - 0.5) / 2.0
    assert str(depth_imbalance(BIDS, ASKS, 2)) == "0.1428571428571428571428571429"  # 0.5 / 3.5: 28 digits
    assert str(depth_imbalance(BIDS, ASKS, 10)) == "-0.05882352941176470588235294118"  # -0.5 / 8.5


def test_microprice_rounds_to_28_digits() -> None:
    bids, asks = levels(("100", "1")), levels(("101", "2"))
    assert str(microprice(bids, asks)) == "100.3333333333333333333333333"  # (100*2 + 101*1) / 3


def test_missing_sides_and_zero_quantities_give_none() -> None:
    assert spread([], ASKS) is None
    assert mid(BIDS, []) is None
    assert microprice([], []) is None
    assert microprice(levels(("1", "0")), levels(("2", "0"))) is None
    assert depth_imbalance([], [], 5) is None
    with pytest.raises(ValueError, match="depth"):
        depth_imbalance(BIDS, ASKS, 0)


def test_book_stats_json() -> None:
    assert book_stats_json(book_stats(BIDS, ASKS, depth=1)) == {
        "spread": "0.10",
        "mid": "65114.25",
        "microprice": "65114.275",
        "depth_imbalance": "0.5",
        "depth": 1,
    }
    assert book_stats_json(book_stats([], []))["mid"] is None


def test_divergence_needs_updates_within_100_ms() -> None:
    binance = (Decimal("65120"), 1_000_000)
    bybit = (Decimal("65100"), 1_100_000)
    # (65120 - 65100) * 20000 / 130220 bps of the mean mid
    assert str(mid_divergence_bps(binance, bybit)) == "3.071724773460297957303025649"
    assert mid_divergence_bps(bybit, binance) == -mid_divergence_bps(binance, bybit)  # type: ignore[operator]
    assert mid_divergence_bps(binance, (Decimal("65100"), 1_100_001)) is None
    assert mid_divergence_bps(binance, None) is None
    assert mid_divergence_bps((Decimal(100), 0), (Decimal(100), 0)) == 0


@given(
    st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**4)), max_size=8),
    st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**4)), max_size=8),
    st.integers(1, 10),
)
def test_depth_imbalance_is_the_exact_ratio(
    bids: list[tuple[int, int]], asks: list[tuple[int, int]], depth: int
) -> None:
    from fractions import Fraction

    book_bids = [(Decimal(p).scaleb(-2), Decimal(q).scaleb(-3)) for p, q in bids]
    book_asks = [(Decimal(p).scaleb(-2), Decimal(q).scaleb(-3)) for p, q in asks]
    got = depth_imbalance(book_bids, book_asks, depth)
    b = sum((Fraction(q) for _, q in book_bids[:depth]), Fraction(0))
    a = sum((Fraction(q) for _, q in book_asks[:depth]), Fraction(0))
    if a + b == 0:
        assert got is None
    else:
        assert got is not None
        assert abs(Fraction(got) - (b - a) / (b + a)) <= Fraction(1, 10**27)
