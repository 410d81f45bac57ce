from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketflow.analytics import compute_candles_from_trades, floor_time, parse_interval
from marketflow.analytics.bars import default_bin, normalize_bin
from marketflow.analytics.decimal_fmt import dec, ratio
from marketflow.model import Trade

from . import brute
from .strategies import T0, trade, trade_lists

MIN = 60_000_000


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1s", 1_000_000),
        ("15s", 15_000_000),
        ("1m", 60_000_000),
        ("5m", 300_000_000),
        ("1h", 3_600_000_000),
        ("4h", 14_400_000_000),
        ("1d", 86_400_000_000),
        ("90s", 90_000_000),
    ],
)
def test_parse_interval(text: str, us: int) -> None:
    assert parse_interval(text) == us


@pytest.mark.parametrize("text", ["", "0m", "1", "m", "1w", "1.5m", " 1m", "01m", "1M"])
def test_parse_interval_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="interval must be"):
        parse_interval(text)


def test_floor_time_aligns_to_the_epoch() -> None:
    assert floor_time(T0 + 59_999_999, MIN) == T0
    assert floor_time(T0 + MIN, MIN) == T0 + MIN
    assert floor_time(-1, MIN) == -MIN


def test_default_bin_is_a_power_of_ten_about_a_thousandth_of_the_price() -> None:
    assert dec(default_bin(Decimal("65114.20"))) == "10"
    assert dec(default_bin(Decimal("99999"))) == "10"
    assert dec(default_bin(Decimal("100000"))) == "100"
    assert dec(default_bin(Decimal("3012.5"))) == "1"
    assert dec(default_bin(Decimal("150.25"))) == "0.1"
    assert dec(default_bin(Decimal("0.5731"))) == "0.0001"
    assert dec(normalize_bin(Decimal("1E+1"))) == "10"
    with pytest.raises(ValueError, match="bin size"):
        normalize_bin(Decimal(0))


def test_ratio_is_28_digit_division_or_none() -> None:
    assert ratio(Decimal("130228.4000"), Decimal("2.00")) == Decimal("65114.20")
    assert str(ratio(Decimal(1), Decimal(3))) == "0.3333333333333333333333333333"
    assert ratio(Decimal(1), Decimal(0)) is None
    assert dec(Decimal("1.0E-7")) == "0.00000010"


def test_candle_fields_keep_the_exchanges_strings() -> None:
    trades = [
        trade("65114.20", "0.010", "buy", T0 + 5),
        trade("65110.00", "0.020", "sell", T0 + 1),  # earlier ts, later arrival: the open
        trade("65120.50", "0.005", "buy", T0 + 9),
        trade("65119.90", "0.001", "sell", T0 + 9),  # same ts as the previous, arrived later: the close
        trade("70000", "1", "buy", T0 + MIN),  # next candle
    ]
    first = compute_candles_from_trades(trades, "1m")["candles"][0]
    assert first == {
        "start": "2024-10-04T00:00:00.000Z",
        "open": "65110.00",
        "high": "65120.50",
        "low": "65110.00",
        "close": "65119.90",
        "volume": "0.036",
        "buy_volume": "0.015",
        "sell_volume": "0.021",
        "trades": 4,
        "vwap": "65112.90",  # 2344.0644000 / 0.036 terminates: exact, with Decimal's ideal exponent
    }
    third = compute_candles_from_trades([*trades, trade("70001", "2", "sell", T0 + MIN + 1)], "1m")
    assert third["candles"][1]["vwap"] == "70000.66666666666666666666667"  # 28 significant digits


def test_zero_amount_trades_are_not_trades() -> None:
    trades = [trade("100", "0", "buy", T0), trade("101", "0.5", "sell", T0 + 1)]
    (candle,) = compute_candles_from_trades(trades, "1m")["candles"]
    assert (candle["open"], candle["trades"]) == ("101", 1)
    assert compute_candles_from_trades([trades[0]], "1m") == {"candles": []}


def test_range_and_limit() -> None:
    trades = [trade("100", "1", "buy", T0 + minute * MIN + 7) for minute in range(5)]
    starts = [c["start"][11:16] for c in compute_candles_from_trades(trades, "1m")["candles"]]
    assert starts == ["00:00", "00:01", "00:02", "00:03", "00:04"]
    ranged = compute_candles_from_trades(trades, "1m", since=T0 + 1, until=T0 + 4 * MIN)["candles"]
    assert [c["start"][11:16] for c in ranged] == ["00:01", "00:02", "00:03"]  # start in [since, until)
    first_two = compute_candles_from_trades(trades, "1m", since=T0, limit=2)["candles"]
    assert [c["start"][11:16] for c in first_two] == ["00:00", "00:01"]
    last_two = compute_candles_from_trades(trades, "1m", limit=2)["candles"]
    assert [c["start"][11:16] for c in last_two] == ["00:03", "00:04"]
    assert compute_candles_from_trades(trades, "1m", limit=0) == {"candles": []}


@given(trade_lists(), st.sampled_from(["15s", "1m", "90s", "5m"]), st.data())
def test_candles_from_trades_match_brute_force(
    trades: list[Trade], interval: str, data: st.DataObject
) -> None:
    interval_us = parse_interval(interval)
    since = data.draw(st.none() | st.integers(T0 - MIN, T0 + 700_000_000))
    until = data.draw(st.none() | st.integers(T0 - MIN, T0 + 700_000_000))
    got = compute_candles_from_trades(trades, interval, since=since, until=until)
    assert got == {"candles": brute.candles(trades, interval_us, since, until)}
