"""The live engine against the pure from-trades functions and the brute-force references."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from marketflow.analytics import (
    AnalyticsEngine,
    Candle,
    NotLiveError,
    PackedBar,
    candle_json,
    compute_candles_from_trades,
    compute_order_flow_from_trades,
    compute_volume_profile_from_trades,
    parse_interval,
)
from marketflow.config import AnalyticsConfig
from marketflow.model import Trade

from . import brute
from .strategies import EXCHANGE, SYMBOL, T0, earliest_first, trade, trade_lists

MIN = 60_000_000
LARGE = Decimal("20")
INTERVAL_SETS = st.sampled_from([("1m",), ("1m", "5m"), ("30s", "1m", "90s"), ("15s", "1h"), ("2m", "1m")])


def engine_for(
    intervals: tuple[str, ...] = ("1m", "5m"),
    size: Decimal | None = Decimal("0.5"),
    persisted: list[Candle] | None = None,
    **kwargs: object,
) -> AnalyticsEngine:
    config = AnalyticsConfig(
        candle_intervals=intervals,
        large_trade_notional=LARGE,
        bin_size={SYMBOL: size} if size is not None else {},
    )
    persist = persisted.extend if persisted is not None else None
    return AnalyticsEngine(None, config, persist=persist, **kwargs)  # type: ignore[arg-type]


def last_written(persisted: list[Candle]) -> dict[tuple[str, int], dict[str, object]]:
    """What an upsert into `candles` leaves: the last candle per (interval, start)."""
    return {(c.interval, c.start): candle_json(c) for c in persisted}


def feed(
    engine: AnalyticsEngine, trades: list[Trade], cuts: list[int], clock_steps: list[int] | None
) -> None:
    """Ingest in batches cut at `cuts`; between batches, optionally close what the clock says is due."""
    bounds = [0, *sorted(set(cuts)), len(trades)]
    seen = T0
    for number, (low, high) in enumerate(zip(bounds, bounds[1:], strict=False)):
        engine.ingest(trades[low:high])
        seen = max([seen, *(t.ts for t in trades[low:high])])
        if clock_steps:
            engine.close_due(seen + clock_steps[number % len(clock_steps)])


@settings(max_examples=150)
@given(
    trade_lists(max_size=70),
    INTERVAL_SETS,
    st.lists(st.integers(0, 70), max_size=8),
    st.none() | st.lists(st.integers(-MIN, 3 * MIN), min_size=1, max_size=4),
)
def test_live_results_equal_from_trades_and_brute_force(
    trades: list[Trade], intervals: tuple[str, ...], cuts: list[int], clock_steps: list[int] | None
) -> None:
    trades = earliest_first(trades)
    persisted: list[Candle] = []
    engine = engine_for(intervals, persisted=persisted, close_grace_s=0)
    feed(engine, trades, cuts, clock_steps)
    for interval in intervals:
        interval_us = parse_interval(interval)
        expected = brute.candles(trades, interval_us)
        assert engine.candles(EXCHANGE, SYMBOL, interval) == {"candles": expected}
        assert compute_candles_from_trades(trades, interval) == {"candles": expected}
        flow = engine.order_flow(EXCHANGE, SYMBOL, interval, footprint=True)
        assert flow == {"bars": brute.order_flow(trades, interval_us, LARGE, size=Decimal("0.5"))}
        assert flow == compute_order_flow_from_trades(
            trades, interval, large_trade_notional=LARGE, footprint=True, bin=Decimal("0.5")
        )
        wide = engine.order_flow(EXCHANGE, SYMBOL, interval, footprint=True, bin=Decimal("1.5"))
        assert wide == {"bars": brute.order_flow(trades, interval_us, LARGE, size=Decimal("1.5"))}
    assert engine.volume_profile(EXCHANGE, SYMBOL) == brute.profile(trades, Decimal("0.5"), Decimal("0.70"))
    stats = engine.statistics()
    event(f"late trades: {'some' if stats.late else 'none'}; dropped: {stats.late_dropped}")
    engine.flush()
    written = last_written(persisted)
    expected_rows = {
        (interval, row_start): row
        for interval in intervals
        for row_start, row in (
            (brute_start(row), row) for row in brute.candles(trades, parse_interval(interval))
        )
    }
    assert written == expected_rows


def brute_start(row: dict[str, object]) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(str(row["start"]).replace("Z", "+00:00")).timestamp()) * 1_000_000


@settings(max_examples=150)
@given(trade_lists(max_size=60), INTERVAL_SETS, st.lists(st.integers(0, 60), max_size=5), st.data())
def test_live_profile_is_exact_or_not_live(
    trades: list[Trade], intervals: tuple[str, ...], cuts: list[int], data: st.DataObject
) -> None:
    trades = earliest_first(trades)
    engine = engine_for(intervals)
    feed(engine, trades, cuts, None)
    step = parse_interval(data.draw(st.sampled_from(intervals)))
    since = data.draw(st.none() | st.integers(0, 11).map(lambda k: T0 + k * step // 2))
    until = data.draw(st.none() | st.integers(0, 11).map(lambda k: T0 + k * step // 2))
    size = data.draw(st.sampled_from([None, Decimal("0.5"), Decimal("1"), Decimal("2.5")]))
    expected = brute.profile(trades, size or Decimal("0.5"), Decimal("0.70"), since, until)
    try:
        got = engine.volume_profile(EXCHANGE, SYMBOL, since, until, size)
    except NotLiveError:
        event("not live")
        # Only when every interval has a bar with trades on both sides of a bound.
        for interval in intervals:
            assert any(
                straddles(bar_ts, since, until) for bar_ts in bar_times(trades, parse_interval(interval))
            )
        return
    event("live")
    assert got == expected
    assert got == compute_volume_profile_from_trades(
        trades, since=since, until=until, bin=size or Decimal("0.5"), value_area=Decimal("0.70")
    )


def bar_times(trades: list[Trade], interval_us: int) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for t in trades:
        if t.amount > 0:
            groups.setdefault(t.ts - t.ts % interval_us, []).append(t.ts)
    return list(groups.values())


def straddles(times: list[int], since: int | None, until: int | None) -> bool:
    def split(bound: int | None) -> bool:
        return bound is not None and min(times) < bound <= max(times)

    return split(since) or split(until)


def test_a_late_trade_corrects_its_closed_candle_and_is_persisted_again() -> None:
    persisted: list[Candle] = []
    engine = engine_for(("1m", "5m"), persisted=persisted)
    engine.ingest([trade("100", "1", "buy", T0 + 10), trade("101", "1", "buy", T0 + MIN + 10)])
    assert [(c.interval, c.start) for c in persisted] == [("1m", T0)]
    engine.ingest([trade("102", "1", "buy", T0 + 2 * MIN)])
    persisted.clear()
    engine.ingest([trade("99", "2", "sell", T0 + 5)])  # backfill: belongs to the first minute
    assert [(c.interval, c.start, c.open, c.low, c.volume, c.trades) for c in persisted] == [
        ("1m", T0, Decimal(99), Decimal(99), Decimal(3), 2)
    ]
    # The 5m candle is still open: corrected in place, not persisted.
    (five,) = engine.candles(EXCHANGE, SYMBOL, "5m")["candles"]
    assert (five["open"], five["low"], five["trades"]) == ("99", "99", 4)
    assert engine.statistics().late == 1


def test_the_clock_closes_quiet_bars_and_later_trades_in_them_are_corrections() -> None:
    persisted: list[Candle] = []
    engine = engine_for(("1m",), persisted=persisted, close_grace_s=2)
    engine.ingest([trade("100", "1", "buy", T0 + 10)])
    engine.close_due(T0 + MIN + 1_999_999)
    assert persisted == []
    engine.close_due(T0 + MIN + 2_000_000)
    assert [(c.start, c.trades) for c in persisted] == [(T0, 1)]
    engine.ingest([trade("101", "1", "buy", T0 + MIN - 1)])  # after its bar closed
    assert [(c.start, c.trades) for c in persisted] == [(T0, 1), (T0, 2)]
    engine.ingest([trade("102", "1", "buy", T0 + MIN + 1)])  # the clock has not closed this minute
    assert len(persisted) == 2
    engine.close_due(T0 + 3 * MIN + 2_000_000)
    assert [(c.start, c.trades) for c in persisted][-1] == (T0 + MIN, 1)
    engine.ingest([trade("103", "1", "buy", T0 + 2 * MIN + 1)])  # a quiet minute the clock closed: made
    assert [(c.start, c.trades) for c in persisted][-1] == (T0 + 2 * MIN, 1)
    engine.ingest([trade("104", "1", "buy", T0 + 3 * MIN)])  # not closed: opens a bar
    assert len(persisted) == 4
    assert engine.statistics().late == 2


def test_late_trades_outside_the_window_are_dropped_and_counted() -> None:
    persisted: list[Candle] = []
    engine = engine_for(("1m",), persisted=persisted, max_bars=2)
    engine.ingest([trade("100", "1", "buy", T0 + minute * MIN) for minute in range(1, 6)])
    starts = [c["start"][11:16] for c in engine.candles(EXCHANGE, SYMBOL, "1m")["candles"]]
    assert starts == ["00:03", "00:04", "00:05"]  # two closed + the open one
    assert engine.live_since(EXCHANGE, SYMBOL, "1m") == T0 + 3 * MIN
    persisted.clear()
    engine.ingest([trade("90", "1", "buy", T0 + 2 * MIN + 1)])  # its bar left the window
    engine.ingest([trade("90", "1", "buy", T0 + 5)])  # before the first trade's bar
    assert persisted == []
    stats = engine.statistics()
    assert (stats.late, stats.late_dropped) == (2, 2)


def test_markets_are_separate_and_the_default_bin_comes_from_the_first_trade() -> None:
    engine = engine_for(size=None)
    engine.ingest(
        [
            trade("65114.20", "1", "buy", T0),
            trade("3012.5", "2", "sell", T0, symbol="ETH-USDT"),
            trade("65000", "1", "buy", T0, exchange="binance"),
        ]
    )
    assert engine.bin_size(EXCHANGE, SYMBOL) == Decimal(10)
    assert engine.bin_size(EXCHANGE, "ETH-USDT") == Decimal(1)
    assert sorted(engine.markets()) == [("binance", SYMBOL), (EXCHANGE, SYMBOL), (EXCHANGE, "ETH-USDT")]
    assert engine.volume_profile(EXCHANGE, SYMBOL)["poc"] == "65110"
    assert engine.candles("binance", SYMBOL, "1m")["candles"][0]["open"] == "65000"
    assert engine.candles("binance", "SOL-USDT", "1m") == {"candles": []}
    assert engine.statistics().markets == 3


def test_queries_the_engine_cannot_answer_live() -> None:
    engine = engine_for(("1m", "5m"))
    engine.ingest([trade("100", "1", "buy", T0 + 10), trade("100", "1", "buy", T0 + 50)])
    with pytest.raises(NotLiveError, match="not computed live"):
        engine.candles(EXCHANGE, SYMBOL, "15m")
    with pytest.raises(NotLiveError, match="not a multiple"):
        engine.order_flow(EXCHANGE, SYMBOL, "1m", footprint=True, bin=Decimal("0.3"))
    with pytest.raises(NotLiveError, match="wholly inside or outside"):
        engine.volume_profile(EXCHANGE, SYMBOL, since=T0 + 20)
    with pytest.raises(ValueError, match="interval must be"):
        engine.candles(EXCHANGE, SYMBOL, "soon")
    # Bars whose trades all lie on one side of an unaligned bound are fine.
    assert engine.volume_profile(EXCHANGE, SYMBOL, since=T0 + 5)["total_volume"] == "2"
    assert engine.volume_profile(EXCHANGE, SYMBOL, since=T0 + 51)["total_volume"] == "0"


def test_zero_amount_trades_are_ignored() -> None:
    engine = engine_for()
    engine.ingest([trade("100", "0", "buy", T0), trade("100", "1", "buy", T0 + 1)])
    assert engine.statistics().ignored == 1
    (candle,) = engine.candles(EXCHANGE, SYMBOL, "1m")["candles"]
    assert candle["trades"] == 1


def test_closed_bars_are_packed_and_late_trades_still_correct_them() -> None:
    engine = engine_for(("1m",))
    trades = [trade("100", "1", "buy", T0 + 10), trade("100.6", "2", "sell", T0 + 20)]
    trades.append(trade("101", "1", "buy", T0 + MIN + 10))
    engine.ingest(trades)
    series = engine._markets[EXCHANGE, SYMBOL].series[0]
    (closed,) = series.closed
    # The window holds two strings, not seven Decimals and a dict of Decimal lists.
    assert isinstance(closed, PackedBar)
    assert (closed.figures, closed.cell_text) == ("100 100.6 100.6 100 1 2 301.2", "100.0 0 1 100.5 2 0")
    assert (closed.open, closed.high, closed.cells) == (
        Decimal("100"),
        Decimal("100.6"),
        {
            Decimal("100.0"): [Decimal(0), Decimal(1)],
            Decimal("100.5"): [Decimal(2), Decimal(0)],
        },
    )
    with pytest.raises(AttributeError, match="read-only"):
        closed.buy += 1  # type: ignore[misc]
    late = trade("100.2", "3", "buy", T0 + 30)
    engine.ingest([late])
    (corrected,) = series.closed
    assert isinstance(corrected, PackedBar) and series.by_start[corrected.start] is corrected
    assert corrected.cell_text == "100.0 0 4 100.5 2 0"
    assert engine.order_flow(EXCHANGE, SYMBOL, "1m", footprint=True) == compute_order_flow_from_trades(
        [*trades, late], "1m", large_trade_notional=LARGE, footprint=True, bin=Decimal("0.5")
    )
    assert engine.candles(EXCHANGE, SYMBOL, "1m") == compute_candles_from_trades([*trades, late], "1m")
