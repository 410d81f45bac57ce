"""The live merge of partial tickers and derivatives, the sampler, quotes and liquidation identity, against
brute-force references; the market-data keeper under a virtual clock; the poll interval inside the budget."""

from __future__ import annotations

from decimal import Decimal

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from marketflow.exchanges.base import RestPoll, RestRequest
from marketflow.model import (
    DERIVATIVES_FIELDS,
    TICKER_FIELDS,
    DerivativesTick,
    Liquidation,
    MarketData,
    Ticker,
)
from marketflow.pipeline.market_actors import MarketDataKeeper, poll_interval
from marketflow.pipeline.market_data import Emitted, LiveMarketData
from marketflow.runtime.bus import Bus

D = Decimal
EX, SYM = "bybit", "BTC-USDT-PERP"

values = st.one_of(st.none(), st.sampled_from(["1", "1.0", "1.00", "2.5", "17216.00", "0.000212", "-3"]))


@st.composite
def ticks(draw: st.DrawFn) -> list[Ticker | DerivativesTick]:
    """Partial tickers and derivatives with times that go back now and then (out-of-order ticks)."""
    out: list[Ticker | DerivativesTick] = []
    for _ in range(draw(st.integers(1, 40))):
        ts = draw(st.integers(0, 50)) * 100_000
        snapshot = draw(st.booleans()) and draw(st.booleans())
        if draw(st.booleans()):
            fields = {name: draw(values) for name in TICKER_FIELDS}
            out.append(
                Ticker(
                    EX,
                    SYM,
                    ts,
                    ts,
                    **{k: None if v is None else D(v) for k, v in fields.items()},
                    snapshot=snapshot,
                )
            )
        else:
            fields = {name: draw(values) for name in DERIVATIVES_FIELDS if name != "next_funding_time"}
            nft = draw(st.one_of(st.none(), st.integers(1, 9)))
            made = {k: None if v is None else D(v) for k, v in fields.items()}
            out.append(DerivativesTick(EX, SYM, ts, ts, **made, next_funding_time=nft, snapshot=snapshot))
    return out


def brute_force(
    records: list[Ticker | DerivativesTick], kind: type, fields: tuple[str, ...]
) -> dict[str, str]:
    """Per field: the value (as text) of the newest record carrying it, the later one among equal times."""
    best: dict[str, tuple[int, object]] = {}
    for r in records:
        if not isinstance(r, kind):
            continue
        for name in fields:
            value = getattr(r, name)
            if value is None and not r.snapshot:
                continue
            if name not in best or r.ts >= best[name][0]:
                best[name] = (r.ts, value)
    return {name: str(value) for name, (_, value) in best.items() if value is not None}


@settings(max_examples=150, deadline=None)
@given(ticks())
def test_merge_equals_the_newest_value_of_every_field(records: list[Ticker | DerivativesTick]) -> None:
    live = LiveMarketData(1.0)
    live.apply(records)
    ticker, derivs = live.ticker(EX, SYM)
    for kind, fields, got in ((Ticker, TICKER_FIELDS, ticker), (DerivativesTick, DERIVATIVES_FIELDS, derivs)):
        expected = brute_force(records, kind, fields)
        if got is None:
            assert not any(isinstance(r, kind) for r in records)
            continue
        merged = {name: str(getattr(got, name)) for name in fields if getattr(got, name) is not None}
        assert merged == expected  # exact strings: "1.0" after "1" is kept as received


@st.composite
def derivative_stream(draw: st.DrawFn) -> list[DerivativesTick]:
    """Derivatives ticks in time order (as one venue stream sends them), some changing nothing."""
    ts = 0
    out = []
    for _ in range(draw(st.integers(1, 60))):
        ts += draw(st.integers(0, 700_000))
        mark = draw(st.one_of(st.none(), st.sampled_from(["10", "11", "12"])))
        oi = draw(st.one_of(st.none(), st.sampled_from(["5", "6"])))
        out.append(
            DerivativesTick(
                EX,
                SYM,
                ts,
                ts,
                None if mark is None else D(mark),
                open_interest=None if oi is None else D(oi),
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(derivative_stream())
def test_one_sample_per_interval_with_a_change_holding_the_state_at_its_last_change(
    records: list[DerivativesTick],
) -> None:
    live = LiveMarketData(1.0)
    rows = live.apply(records).samples + live.flush()
    # Reference: the merged state after each record; a bucket with a change yields its last state.
    expected: dict[int, tuple[int, object, object]] = {}
    state: dict[str, object] = {"mark_price": None, "open_interest": None}
    for r in records:
        before = dict(state)
        for name in state:
            if getattr(r, name) is not None:
                state[name] = getattr(r, name)
        if state != before:
            expected[r.ts // 1_000_000] = (r.ts, state["mark_price"], state["open_interest"])
    assert [(r.ts, r.mark_price, r.open_interest) for r in rows] == list(expected.values())


def test_quotes_only_on_a_best_price_change_and_only_when_asked() -> None:
    live = LiveMarketData(1.0, store_quotes=True)
    out = live.apply(
        [
            Ticker(EX, SYM, 1, 1, D("1.0"), D("2"), D("1.5"), D("3")),
            Ticker(EX, SYM, 2, 2, last=D("1.2")),  # no best price change
            Ticker(EX, SYM, 3, 3, bid=D("1.00")),  # same number, other text: as received
            Ticker(EX, SYM, 4, 4, ask_size=D("4")),
        ]
    )
    assert [(q.ts, str(q.bid), str(q.ask_size)) for q in out.quotes] == [
        (1, "1.0", "3"),
        (3, "1.00", "3"),
        (4, "1.00", "4"),
    ]
    quiet = LiveMarketData(1.0)
    assert quiet.apply([Ticker(EX, SYM, 1, 1, D("1"), D("2"), D("3"), D("4"))]).quotes == []


def test_a_liquidation_seen_again_is_handed_on_once() -> None:
    live = LiveMarketData(1.0)
    liq = Liquidation(EX, SYM, "1:Buy:1:2", "sell", D("1"), D("2"), 1000, 5)
    first = live.apply([liq, liq])
    again = live.apply([liq])
    assert first.liquidations == [liq] and again.liquidations == []
    assert live.statistics().duplicate_liquidations == 2
    assert live.recent_liquidations(EX, SYM) == [liq]


async def test_keeper_closes_a_quiet_symbols_bucket_on_the_clock_and_flushes_at_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus: Bus[MarketData] = Bus("market_data")
    live = LiveMarketData(1.0)
    handed: list[tuple[float, Emitted]] = []
    keeper = MarketDataKeeper(bus.subscribe("m", 4), live, lambda e: handed.append((trio.current_time(), e)))
    from marketflow import model

    token = model.replay_clock.set(lambda: int(trio.current_time() * 1_000_000))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await bus.publish([DerivativesTick(EX, SYM, 500_000, 0, D("10"))])  # bucket 0
            await trio.sleep(10)
            await bus.publish([DerivativesTick(EX, SYM, 10_200_000, 0, D("11"))])
            bus.close()
    finally:
        model.replay_clock.reset(token)
    samples = [(when, [r.ts for r in e.samples]) for when, e in handed]
    # Bucket 0 closes once the clock has left it by one interval of grace: at the keeper's wake-up at 2 s.
    assert samples == [(2.0, [500_000]), (10.0, [10_200_000])]


def test_the_poll_interval_stretches_to_stay_inside_its_budget_share() -> None:
    poll = RestPoll("derivatives", 10.0, lambda n: RestRequest("/x", {"symbol": n}), lambda *_: None)
    # 100 symbols x weight 1 in a 1200/min share, a quarter of it for polls: 100 * 60 / 300 = 20 s.
    assert poll_interval(poll, 100, 1, 1200, 60.0) == 20.0
    assert poll_interval(poll, 2, 1, 1200, 60.0) == 10.0  # the declared interval when it fits


# Venues hand on shared objects (a ticker's bid is the book's price object): the same object, an equal one
# written alike, and an equal one written otherwise must all merge as their text says.
POOL = [D(text) for text in ("1", "1.0", "1.00", "2.5", "17216.00", "0.000212", "-3")]
POOL += [D(text) for text in ("1", "1.0", "2.5")]  # equal, alike, but other objects


@st.composite
def shared_ticks(draw: st.DrawFn) -> list[Ticker]:
    """Partial tickers of pooled objects, times going back now and then."""
    out = []
    for _ in range(draw(st.integers(1, 40))):
        ts = draw(st.integers(0, 30)) * 100_000
        snapshot = draw(st.booleans()) and draw(st.booleans())
        made = {name: draw(st.one_of(st.none(), st.sampled_from(POOL))) for name in TICKER_FIELDS}
        out.append(Ticker(EX, SYM, ts, ts, **made, snapshot=snapshot))
    return out


@settings(max_examples=100, deadline=None)
@given(shared_ticks(), st.booleans())
def test_shared_objects_merge_exactly_and_quote_on_every_change_of_text(
    records: list[Ticker], store_quotes: bool
) -> None:
    live = LiveMarketData(1.0, store_quotes=store_quotes)
    quotes = [(q.ts, q.bid, q.bid_size, q.ask, q.ask_size) for r in records for q in live.apply([r]).quotes]
    ticker, _ = live.ticker(EX, SYM)
    assert ticker is not None
    merged = {name: str(getattr(ticker, name)) for name in TICKER_FIELDS if getattr(ticker, name) is not None}
    assert merged == brute_force(list(records), Ticker, TICKER_FIELDS)
    # Reference quotes: the merged best bid/ask after each record, whenever its text changed.
    expected = []
    best: dict[str, tuple[int, object]] = {}
    shown: list[str] = ["None"] * 4
    for r in records:
        for name in TICKER_FIELDS[:4]:
            value = getattr(r, name)
            if (value is not None or r.snapshot) and (name not in best or r.ts >= best[name][0]):
                best[name] = (r.ts, value)
        now = [str(best[name][1]) if name in best else "None" for name in TICKER_FIELDS[:4]]
        if now != shown:
            expected.append((r.ts, *now))
            shown = now
    assert [(ts, *map(str, rest)) for ts, *rest in quotes] == (expected if store_quotes else [])


class _Counted(Decimal):
    """A Decimal that counts how often it is written out as text."""

    formatted = 0

    def __str__(self) -> str:
        _Counted.formatted += 1
        return super().__str__()


def test_a_value_held_already_is_merged_without_formatting_it() -> None:
    """The same object again (a price the venue decoder shares with the book) is no change, seen without
    writing either out as text: the merge runs on every ticker and derivatives record."""
    price, size, mark = _Counted("65000.10"), _Counted("1.5"), _Counted("64999.5")
    live = LiveMarketData(1.0, store_quotes=True)
    live.apply([Ticker(EX, SYM, 1, 1, price, size, price, size), DerivativesTick(EX, SYM, 1, 1, mark)])
    _Counted.formatted = 0
    out = live.apply(
        [Ticker(EX, SYM, ts, ts, price, size, price, size) for ts in range(2, 50)]
        + [DerivativesTick(EX, SYM, ts, ts, mark) for ts in range(2, 50)]
    )
    assert out.quotes == [] and _Counted.formatted == 0
    ticker, derivs = live.ticker(EX, SYM)
    assert ticker is not None and ticker.ts == 49 and ticker.bid is price
    assert derivs is not None and derivs.mark_price is mark


async def test_the_keepers_clock_ticks_on_its_own_beat_whatever_wakes_it_between(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The clock closes buckets every interval from the start, not an interval after the last record: a
    ticker at 1.5 s does not put off the close of bucket 0 that the tick at 2 s is due to make."""
    bus: Bus[MarketData] = Bus("market_data")
    live = LiveMarketData(1.0)
    handed: list[tuple[float, list[int]]] = []
    keeper = MarketDataKeeper(
        bus.subscribe("m", 4), live, lambda e: handed.append((trio.current_time(), [r.ts for r in e.samples]))
    )
    from marketflow import model

    token = model.replay_clock.set(lambda: int(trio.current_time() * 1_000_000))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await bus.publish([DerivativesTick(EX, SYM, 500_000, 0, D("10"))])  # bucket 0
            await trio.sleep(1.5)
            await bus.publish([Ticker(EX, SYM, 1_500_000, 0, D("1"))])
            await trio.sleep(3)
            bus.close()
    finally:
        model.replay_clock.reset(token)
    assert handed == [(2.0, [500_000])]
