from __future__ import annotations

from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from marketflow.analytics import compute_volume_profile_from_trades
from marketflow.model import Trade

from . import brute
from .strategies import T0, trade, trade_lists

BINS = st.sampled_from([Decimal("0.1"), Decimal("0.5"), Decimal("1"), Decimal("0.25"), Decimal("2")])
AREAS = st.sampled_from([Decimal("0.70"), Decimal("0"), Decimal("1"), Decimal("0.5"), Decimal("0.99")])


def profile_of(rows: list[tuple[str, str, str]], **kwargs: object) -> dict[str, object]:
    trades = [trade(price, amount, side, T0 + index) for index, (price, amount, side) in enumerate(rows)]
    return compute_volume_profile_from_trades(trades, **kwargs)  # type: ignore[arg-type]


def test_empty() -> None:
    assert compute_volume_profile_from_trades([]) == {
        "poc": None,
        "vah": None,
        "val": None,
        "value_area": "0",
        "total_volume": "0",
        "bins": [],
    }


def test_single_trade() -> None:
    got = profile_of([("65114.20", "0.5", "buy")])  # default bin: 10
    assert got == {
        "poc": "65110",
        "vah": "65110",
        "val": "65110",
        "value_area": "0.5",
        "total_volume": "0.5",
        "bins": [{"price": "65110", "volume": "0.5", "buy_volume": "0.5", "sell_volume": "0"}],
    }


def test_poc_tie_takes_the_lower_price_and_area_tie_goes_up() -> None:
    rows = [("100", "2", "buy"), ("101", "1", "sell"), ("102", "2", "buy"), ("99", "1", "sell")]
    got = profile_of(rows, bin=Decimal(1), value_area=Decimal("0.6"))
    # POC 100 (ties with 102, lower wins); neighbours 101 (1) and 99 (1) tie → up: area 3 of 6 < 3.6,
    # then 102 (2) vs 99 (1) → 102: area 5 ≥ 3.6.
    assert (got["poc"], got["val"], got["vah"], got["value_area"]) == ("100", "100", "102", "5")


def test_empty_bins_count_zero_and_the_range_edge_sends_the_walk_the_other_way() -> None:
    rows = [("100", "5", "buy"), ("104", "1", "sell"), ("97", "2", "buy")]
    got = profile_of(rows, bin=Decimal(1), value_area=Decimal("0.75"))
    # From 100: 101 and 99 are empty (tie → up) ... up to 104 (1 > 0): area 6 of 8 = 0.75 → stop.
    assert (got["poc"], got["val"], got["vah"], got["value_area"]) == ("100", "100", "104", "6")
    got = profile_of(rows, bin=Decimal(1), value_area=Decimal("0.9"))
    # 104 is the top of the range: only down is left, through the empty 99 and 98 to 97.
    assert (got["poc"], got["val"], got["vah"], got["value_area"]) == ("100", "97", "104", "8")


def test_range_is_half_open() -> None:
    trades = [
        trade("100", "1", "buy", T0),
        trade("101", "1", "buy", T0 + 10),
        trade("102", "1", "buy", T0 + 20),
    ]
    got = compute_volume_profile_from_trades(trades, since=T0 + 10, until=T0 + 20, bin=Decimal(1))
    assert [item["price"] for item in got["bins"]] == ["101"]


@given(trade_lists(max_size=40), BINS, AREAS, st.data())
@example(
    [trade("100.0", "0.10", "buy", T0), trade("100.5", "0.10", "sell", T0), trade("99.5", "0.10", "buy", T0)],
    Decimal("0.5"),
    Decimal("0.70"),
    None,
)
def test_profile_matches_the_grid_walk(
    trades: list[Trade], size: Decimal, value_area: Decimal, data: st.DataObject | None
) -> None:
    since = until = None
    if data is not None:
        since = data.draw(st.none() | st.integers(T0, T0 + 600_000_000))
        until = data.draw(st.none() | st.integers(T0, T0 + 600_000_000))
    got = compute_volume_profile_from_trades(
        trades, since=since, until=until, bin=size, value_area=value_area
    )
    assert got == brute.profile(trades, size, value_area, since, until)


@given(trade_lists(max_size=30, zero_amounts=False))
def test_default_bin_comes_from_the_first_trade(trades: list[Trade]) -> None:
    # Prices 999–1003: 10 ** (floor(log10(999)) - 3) = 0.1, 10 ** (3 - 3) = 1 from 1000 up.
    size = Decimal("0.1") if trades[0].price < 1000 else Decimal(1)
    assert compute_volume_profile_from_trades(trades) == brute.profile(trades, size, Decimal("0.70"))
