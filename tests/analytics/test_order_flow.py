from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from marketflow.analytics import compute_order_flow_from_trades, footprint, parse_interval
from marketflow.model import Trade

from . import brute
from .strategies import T0, trade, trade_lists

MIN = 60_000_000


def cells(levels: dict[str, tuple[str, str]]) -> dict[Decimal, list[Decimal]]:
    """price → (bid volume, ask volume)"""
    return {Decimal(p): [Decimal(bid), Decimal(ask)] for p, (bid, ask) in levels.items()}


def test_bar_fields_cvd_and_large_trades() -> None:
    trades = [
        trade("100", "3", "buy", T0),
        trade("100", "1", "sell", T0 + 1),
        trade("100", "1000", "sell", T0 + MIN),  # notional 100000: large (≥)
        trade("100", "999.99", "buy", T0 + 2 * MIN),  # 99999: not large
    ]
    bars = compute_order_flow_from_trades(trades, "1m", large_trade_notional=Decimal(100000))["bars"]
    assert [(b["delta"], b["cvd"], b["imbalance"], b["large_trades"]) for b in bars] == [
        ("2", "2", "0.75", 0),
        ("-1000", "-998", "0", 1),
        ("999.99", "1.99", "1", 0),
    ]
    later = compute_order_flow_from_trades(trades, "1m", since=T0 + MIN)["bars"]
    assert [b["cvd"] for b in later] == ["-1000", "-0.01"]  # cvd starts at the range's first bar


def test_imbalance_is_null_without_volume() -> None:
    from marketflow.analytics.bars import Bar
    from marketflow.analytics.order_flow import order_flow_json

    assert order_flow_json([Bar(T0, T0 + MIN)])["bars"][0]["imbalance"] is None


def test_diagonal_imbalances() -> None:
    fp = footprint(
        cells({"100": ("1", "0"), "101": ("2", "3"), "102": ("0", "6"), "104": ("5", "0")}),
        Decimal(1),
    )
    flags = {str(level.price): (level.bid_imbalance, level.ask_imbalance) for level in fp.levels}
    assert flags == {
        # bid(100)=1 vs ask(101)=3: no; ask(100)=0: never
        "100": (False, False),
        # bid(101)=2 vs ask(102)=6: no; ask(101)=3 ≥ 3·bid(100)=3: yes (≥)
        "101": (False, True),
        # bid 0: never; ask(102)=6 ≥ 3·bid(101)=6: yes
        "102": (False, True),
        # bid(104)=5 vs ask(105)=0 (empty): yes; ask 0: no
        "104": (True, False),
    }
    assert fp.stacked == ()  # 101, 102 is only two


def test_stacked_imbalances_need_consecutive_grid_bins() -> None:
    fp = footprint(
        cells(
            {"100": ("0", "1"), "101": ("0", "1"), "102": ("0", "1"), "104": ("0", "1"), "105": ("0", "1")}
        ),
        Decimal(1),
    )
    assert [(s.side, str(s.low), str(s.high), s.levels) for s in fp.stacked] == [("ask", "100", "102", 3)]
    three = footprint(
        cells({"100": ("0", "1"), "101": ("0", "1"), "102": ("0", "1")}), Decimal(1), stacked_min=4
    )
    assert three.stacked == ()


@given(
    trade_lists(max_size=50),
    st.sampled_from(["15s", "1m", "90s"]),
    st.sampled_from([Decimal("0.1"), Decimal("0.5"), Decimal("1")]),
    st.sampled_from([Decimal("20"), Decimal("100000"), Decimal("0")]),
    st.data(),
)
def test_order_flow_and_footprint_match_brute_force(
    trades: list[Trade], interval: str, size: Decimal, large: Decimal, data: st.DataObject
) -> None:
    since = data.draw(st.none() | st.integers(T0, T0 + 600_000_000))
    until = data.draw(st.none() | st.integers(T0, T0 + 600_000_000))
    got = compute_order_flow_from_trades(
        trades, interval, since=since, until=until, large_trade_notional=large, footprint=True, bin=size
    )
    assert got == {"bars": brute.order_flow(trades, parse_interval(interval), large, since, until, size)}
    plain = compute_order_flow_from_trades(
        trades, interval, since=since, until=until, large_trade_notional=large
    )
    assert plain == {"bars": brute.order_flow(trades, parse_interval(interval), large, since, until)}
