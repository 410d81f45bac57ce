"""Order books and their synchronizers (PROTOCOLS §1.6, §2.6, §3).

Hypothesis checks `OrderBook` against a brute-force dict model and each venue's gap detection against
streams built id by id (a gap must fire exactly when an event that matters went missing or out of order,
and a book that reports no gap must equal the true book). Every documented boundary is also written out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from marketflow.exchanges.binance.book import BinanceSpotBook, BinanceUsdmBook
from marketflow.exchanges.bybit.book import BybitBook
from marketflow.exchanges.orderbook import BookState, Gap, OrderBook, Synchronizer, book_view
from marketflow.model import BookUpdate, Level


def lv(price: str, amount: str) -> Level:
    return Decimal(price), Decimal(amount)


def levels(pairs: Iterable[tuple[str, str]]) -> list[Level]:
    return [lv(p, a) for p, a in pairs]


def upd(
    first: int,
    last: int | None = None,
    prev: int | None = None,
    bids: Iterable[tuple[str, str]] = (),
    asks: Iterable[tuple[str, str]] = (),
    *,
    snapshot: bool = False,
) -> BookUpdate:
    return BookUpdate(
        "binance",
        "BTC-USDT",
        snapshot,
        first,
        first if last is None else last,
        prev,
        levels(bids),
        levels(asks),
        0,
        0,
    )


def snap(
    last_id: int, bids: Iterable[tuple[str, str]] = (), asks: Iterable[tuple[str, str]] = ()
) -> BookUpdate:
    return upd(last_id, last_id, None, bids, asks, snapshot=True)


def shown(book_side: Sequence[Level]) -> list[tuple[str, str]]:
    """Levels as the exact strings they carry, so `1.5` and `1.50` differ."""
    return [(str(p), str(a)) for p, a in book_side]


# --- OrderBook against a brute-force model -------------------------------------------------------------


class ModelBook:
    """Dicts sorted at read time: obviously right, obviously slow."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Level] = {}
        self.asks: dict[Decimal, Level] = {}

    @staticmethod
    def _apply(side: dict[Decimal, Level], updates: Iterable[Level]) -> None:
        for price, amount in updates:
            if amount != 0:
                side.pop(price, None)
                side[price] = (price, amount)
            else:
                side.pop(price, None)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self._apply(self.bids, bids)
        self._apply(self.asks, asks)

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self.bids.clear()
        self.asks.clear()
        self.apply(bids, asks)

    def levels(self) -> tuple[list[Level], list[Level]]:
        return (
            sorted(self.bids.values(), key=lambda lvl: lvl[0], reverse=True),
            sorted(self.asks.values(), key=lambda lvl: lvl[0]),
        )

    def truncate(self, n: int) -> None:
        bids, asks = self.levels()
        self.bids = {lvl[0]: lvl for lvl in bids[:n]}
        self.asks = {lvl[0]: lvl for lvl in asks[:n]}


ZEROS = ["0", "0.0", "0.00000000", "-0", "0E-8"]
AMOUNTS = ["1", "1.5", "2.250", "0.001", "10.0", "7"]


@st.composite
def grid_levels(draw: st.DrawFn, lo: int = 1, hi: int = 40, zeros: bool = True) -> list[Level]:
    """Levels on a 0.1 grid, each price written with 0-2 extra trailing zeros."""
    out = []
    for _ in range(draw(st.integers(0, 8))):
        tick = draw(st.integers(lo, hi))
        price = f"{tick // 10}.{tick % 10}" + "0" * draw(st.integers(0, 2))
        amount = draw(st.sampled_from(ZEROS + AMOUNTS) if zeros else st.sampled_from(AMOUNTS))
        out.append(lv(price, amount))
    return out


book_ops = st.one_of(
    st.tuples(st.just("apply"), grid_levels(), grid_levels()),
    st.tuples(st.just("replace"), grid_levels(), grid_levels()),
    st.tuples(st.just("clear")),
    st.tuples(st.just("truncate"), st.integers(0, 6)),
)


# deadline=None on every property test here: Hypothesis' default 200 ms deadline is a wall-clock assertion,
# and a busy machine that stalls one example past it failed this test with DeadlineExceeded/FlakyFailure.
@settings(deadline=None)
@given(ops=st.lists(book_ops, max_size=30), reads=st.lists(st.integers(0, 45), min_size=1, max_size=3))
def test_order_book_matches_brute_force_model(ops: list[tuple[Any, ...]], reads: list[int]) -> None:
    book, model = OrderBook(), ModelBook()
    for op, *args in ops:
        if op == "clear":
            book.clear()
            model.replace([], [])
        else:
            getattr(book, op)(*args)
            getattr(model, op)(*args)
        want_bids, want_asks = model.levels()
        got_bids, got_asks = book.levels()
        assert shown(got_bids) == shown(want_bids)
        assert shown(got_asks) == shown(want_asks)
        for n in reads:
            top_bids, top_asks = book.top(n)
            assert shown(top_bids) == shown(want_bids[:n])
            assert shown(top_asks) == shown(want_asks[:n])
            # The checksum path reads prices alone: the same levels, by value, as top().
            prices = book.top_prices(n)
            assert prices == ([p for p, _ in want_bids[:n]], [p for p, _ in want_asks[:n]])
        assert book.depth() == (len(want_bids), len(want_asks))
        assert book.best_bid() == (want_bids[0] if want_bids else None)
        assert book.best_ask() == (want_asks[0] if want_asks else None)
        assert book.crossed() == bool(want_bids and want_asks and want_bids[0][0] >= want_asks[0][0])


def test_zero_in_any_decimal_form_deletes() -> None:
    book = OrderBook()
    book.apply(levels([("1.0", "1"), ("2.0", "1"), ("3.0", "1")]), levels([("4.0", "1")]))
    book.apply(levels([("1.0", "0"), ("2.0", "0.0"), ("3.0", "0.00000000")]), levels([("4.0", "0.000")]))
    assert book.depth() == (0, 0)
    assert book.best_bid() is None and book.best_ask() is None


def test_deleting_an_absent_level_is_a_no_op() -> None:
    book = OrderBook()
    book.apply(levels([("1.0", "1")]), [])
    book.apply(levels([("9.9", "0")]), levels([("9.9", "0")]))
    assert book.levels() == ([lv("1.0", "1")], [])


def test_equal_prices_written_differently_are_one_level_and_the_latest_writing_is_kept() -> None:
    book = OrderBook()
    book.apply(levels([("65000.10", "1")]), [])
    book.apply(levels([("65000.1", "2")]), [])
    assert shown(book.levels()[0]) == [("65000.1", "2")]
    book.apply(levels([("65000.100", "0")]), [])
    assert book.depth() == (0, 0)


def test_top_orders_bids_down_and_asks_up_and_limits() -> None:
    book = OrderBook()
    book.apply(
        levels([("10", "1"), ("12", "2"), ("11", "3")]),
        levels([("15", "1"), ("13", "2"), ("14", "3")]),
    )
    assert book.top(2) == (levels([("12", "2"), ("11", "3")]), levels([("13", "2"), ("14", "3")]))
    assert book.top(0) == ([], [])
    assert book.top(99) == book.levels()
    assert book.best_bid() == lv("12", "2")
    assert book.best_ask() == lv("13", "2")
    with pytest.raises(ValueError, match="n >= 0"):
        book.top(-1)


def test_crossed_when_best_bid_reaches_best_ask() -> None:
    book = OrderBook()
    book.apply(levels([("10", "1")]), levels([("11", "1")]))
    assert not book.crossed()
    book.apply(levels([("11.0", "1")]), [])
    assert book.crossed()


def test_truncate_keeps_the_best_levels_per_side() -> None:
    book = OrderBook()
    book.apply(
        levels([(str(p), "1") for p in range(1, 6)]),
        levels([(str(p), "1") for p in range(6, 11)]),
    )
    book.truncate(2)
    assert [p for p, _ in book.levels()[0]] == [Decimal(5), Decimal(4)]
    assert [p for p, _ in book.levels()[1]] == [Decimal(6), Decimal(7)]
    book.apply(levels([("4.5", "1")]), levels([("6.5", "1")]))
    assert book.depth() == (3, 3)


def test_replace_forgets_the_previous_book() -> None:
    book = OrderBook()
    book.apply(levels([("1", "1"), ("2", "1")]), levels([("5", "1")]))
    book.replace(levels([("3", "1")]), levels([("4", "1")]))
    assert book.levels() == ([lv("3", "1")], [lv("4", "1")])


# --- id streams built one update id at a time ----------------------------------------------------------


@attrs.frozen
class Event:
    first: int
    last: int
    prev: int
    changes: tuple[tuple[int, str, Level], ...]  # (update id, side, level), in id order

    def update(self) -> BookUpdate:
        sides: dict[str, dict[Decimal, Level]] = {"b": {}, "a": {}}
        for _, side, level in self.changes:
            sides[side][level[0]] = level  # the event carries the final amount per price
        return BookUpdate(
            "binance",
            "BTC-USDT",
            False,
            self.first,
            self.last,
            self.prev,
            list(sides["b"].values()),
            list(sides["a"].values()),
            0,
            0,
        )


def truth(events: Sequence[Event], upto: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The book after every update id <= upto, as exact strings."""
    model = ModelBook()
    for ev in events:
        for update_id, side, level in ev.changes:
            if update_id <= upto:
                model.apply([level] if side == "b" else [], [level] if side == "a" else [])
    bids, asks = model.levels()
    return shown(bids), shown(asks)


def snapshot_at(events: Sequence[Event], last_id: int) -> BookUpdate:
    bids, asks = truth(events, last_id)
    return snap(last_id, bids, asks)


@st.composite
def one_change(draw: st.DrawFn, update_id: int) -> tuple[int, str, Level]:
    # Bids on 0.1-1.0, asks on 1.1-2.0: a correct book is never crossed.
    side = draw(st.sampled_from("ba"))
    tick = draw(st.integers(1, 10)) + (10 if side == "a" else 0)
    price = f"{tick // 10}.{tick % 10}"
    return update_id, side, lv(price, draw(st.sampled_from(["0", "0.00000000", *AMOUNTS])))


@st.composite
def binance_stream(draw: st.DrawFn, *, usdm: bool) -> list[Event]:
    """Spot: U = previous u + 1. USD-M: U jumps ahead (other symbols' ids), pu = previous u."""
    next_id = draw(st.integers(1, 10**12))
    prev = next_id - 1 - draw(st.integers(0, 5))
    events = []
    for _ in range(draw(st.integers(3, 10))):
        if usdm:
            next_id += draw(st.integers(0, 5))
        size = draw(st.integers(1, 4))
        changes = tuple(draw(one_change(i)) for i in range(next_id, next_id + size))
        events.append(Event(next_id, next_id + size - 1, prev, changes))
        prev = next_id + size - 1
        next_id = prev + 1
    return events


mutations = st.one_of(
    st.just(("none", 0)),
    st.tuples(st.just("remove"), st.integers(0, 100)),
    st.tuples(st.just("swap"), st.integers(0, 100)),
)


def mutate(events: list[Event], mutation: tuple[str, int]) -> tuple[list[Event], str, int]:
    """Remove or swap (with the next) one event between the first and the last; index clamped."""
    kind, raw = mutation
    if kind == "none":
        return list(events), kind, -1
    i = 1 + raw % (len(events) - 2)
    out = list(events)
    if kind == "remove":
        del out[i]
    else:
        out[i], out[i + 1] = out[i + 1], out[i]
    return out, kind, i


def run_binance(
    sync: BinanceSpotBook | BinanceUsdmBook, delivered: list[Event], snapshot: BookUpdate, after: int
) -> list[Gap]:
    gaps = []
    for index, ev in enumerate(delivered):
        gap = sync.on_update(ev.update())
        if gap is not None:
            gaps.append(gap)
        if index == after:
            assert sync.needs_snapshot() == (sync.state is not BookState.SYNCED)
            gap = sync.on_snapshot(snapshot)
            if gap is not None:
                gaps.append(gap)
    return gaps


def check_binance_outcome(
    sync: Synchronizer,
    gaps: list[Gap],
    events: list[Event],
    kind: str,
    i: int,
    bridge: int,
) -> None:
    """`bridge`: index of the first event the snapshot does not already contain."""
    if kind == "none" or (kind == "remove" and i < bridge) or (kind == "swap" and i + 1 < bridge):
        must_gap: bool | None = False
    elif i >= bridge:
        must_gap = True
    else:  # the bridging event overtook a stale one: either outcome is safe, silent damage is not
        must_gap = None
    event(f"{kind}: gap {'required' if must_gap else 'forbidden' if must_gap is False else 'allowed'}")
    assert len(gaps) <= 1
    if must_gap is not None:
        assert bool(gaps) == must_gap, gaps
    if gaps:
        assert sync.state is BookState.RESYNCING
        assert sync.book.depth() == (0, 0) and book_view(sync) is None
        assert sync.needs_snapshot()
        if must_gap:
            assert gaps[0].got_first_id == events[i + 1].first
    else:
        assert sync.state is BookState.SYNCED
        bids, asks = sync.book.levels()
        assert (shown(bids), shown(asks)) == truth(events, events[-1].last)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), mutation=mutations)
def test_spot_gap_fires_exactly_when_an_event_that_matters_is_missing(
    data: st.DataObject, mutation: tuple[str, int]
) -> None:
    events = data.draw(binance_stream(usdm=False))
    # Any snapshot the official algorithm accepts: not older than the first buffered U.
    snapshot_id = data.draw(st.integers(events[0].first, events[-1].last))
    delivered, kind, i = mutate(events, mutation)
    after = data.draw(st.integers(0, len(delivered) - 1))
    sync = BinanceSpotBook()
    gaps = run_binance(sync, delivered, snapshot_at(events, snapshot_id), after)
    bridge = next((k for k, e in enumerate(events) if e.last > snapshot_id), len(events))
    check_binance_outcome(sync, gaps, events, kind, i, bridge)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), mutation=mutations)
def test_usdm_gap_fires_exactly_when_an_event_that_matters_is_missing(
    data: st.DataObject, mutation: tuple[str, int]
) -> None:
    events = data.draw(binance_stream(usdm=True))
    # USD-M lastUpdateId is an id of this symbol's book: inside some event's [U, u].
    at = data.draw(st.integers(0, len(events) - 1))
    snapshot_id = data.draw(st.integers(events[at].first, events[at].last))
    delivered, kind, i = mutate(events, mutation)
    after = data.draw(st.integers(0, len(delivered) - 1))
    sync = BinanceUsdmBook()
    gaps = run_binance(sync, delivered, snapshot_at(events, snapshot_id), after)
    check_binance_outcome(sync, gaps, events, kind, i, bridge=at)


@settings(max_examples=200, deadline=None)
@given(
    first=st.integers(1, 10**12),
    snapshot=grid_levels(1, 10, zeros=False),
    deltas=st.lists(st.tuples(grid_levels(1, 10), grid_levels(11, 20)), min_size=3, max_size=12),
    mutation=mutations,
)
def test_bybit_gap_fires_exactly_when_a_delta_is_missing_or_out_of_order(
    first: int,
    snapshot: list[Level],
    deltas: list[tuple[list[Level], list[Level]]],
    mutation: tuple[str, int],
) -> None:
    updates = [BookUpdate("bybit", "BTC-USDT", True, first, first, None, snapshot, [], 0, 0)]
    updates += [
        BookUpdate("bybit", "BTC-USDT", False, first + k, first + k, None, bids, asks, 0, 0)
        for k, (bids, asks) in enumerate(deltas, start=1)
    ]
    kind, raw = mutation
    delivered = list(updates)
    i = 1 + raw % (len(updates) - 2)  # a delta with a delta after it
    if kind == "remove":
        del delivered[i]
    elif kind == "swap":
        delivered[i], delivered[i + 1] = delivered[i + 1], delivered[i]
    sync = BybitBook()
    gaps = [gap for gap in map(sync.on_update, delivered) if gap is not None]
    if kind == "none":
        assert gaps == []
        model = ModelBook()
        for update in updates:
            model.apply(update.bids, update.asks)
        assert shown(sync.book.levels()[0]) == shown(model.levels()[0])
        assert shown(sync.book.levels()[1]) == shown(model.levels()[1])
        assert sync.last_id == first + len(deltas)
    else:
        assert len(gaps) == 1
        assert gaps[0].got_first_id == first + i + 1
        assert sync.state is BookState.RESYNCING and sync.book.depth() == (0, 0)
        assert sync.statistics().updates_ignored == len(delivered) - i - 1  # after the offending delta


# --- Bybit (PROTOCOLS §1.6) ----------------------------------------------------------------------------

ETH_SNAPSHOT = (
    '{"topic":"orderbook.50.ETHUSDT","ts":1789875210000,"type":"snapshot","data":{"s":"ETHUSDT",'
    '"b":[["2191.5","3.25"],["2191.4","1.0"],["2191.0","0.5"]],"a":[["2191.6","2.0"],["2191.7","4.0"]],'
    '"u":219167606,"seq":181840388171}}'
)
ETH_DELTA = (
    '{"topic":"orderbook.50.ETHUSDT","ts":1789875210020,"type":"delta","data":{"s":"ETHUSDT",'
    '"b":[["2191.5","0.0"],["2191.2","9.0"]],"a":[],"u":219167607,"seq":181840388311}}'
)


def bybit_frame(text: str) -> BookUpdate:
    """The recorded frame as a decoder would hand it over."""
    frame = json.loads(text)
    data = frame["data"]
    u = data["u"]
    return BookUpdate(
        "bybit",
        "ETH-USDT",
        frame["type"] == "snapshot" or u == 1,
        u,
        u,
        None,
        levels(data["b"]),
        levels(data["a"]),
        frame["ts"] * 1000,
        0,
    )


def bybit(u: int, bids: Iterable[tuple[str, str]] = (), asks: Iterable[tuple[str, str]] = ()) -> BookUpdate:
    return BookUpdate("bybit", "ETH-USDT", False, u, u, None, levels(bids), levels(asks), 0, 0)


def bybit_snap(
    u: int, bids: Iterable[tuple[str, str]] = (), asks: Iterable[tuple[str, str]] = ()
) -> BookUpdate:
    return BookUpdate("bybit", "ETH-USDT", True, u, u, None, levels(bids), levels(asks), 0, 0)


def synced_bybit() -> BybitBook:
    sync = BybitBook()
    assert sync.on_update(bybit_frame(ETH_SNAPSHOT)) is None
    return sync


def test_bybit_recorded_spot_pair_deletes_and_inserts() -> None:
    sync = synced_bybit()
    assert sync.on_update(bybit_frame(ETH_DELTA)) is None
    assert sync.state is BookState.SYNCED and sync.last_id == 219167607
    view = book_view(sync)
    assert view is not None
    bids, asks = view
    assert shown(bids) == [("2191.4", "1.0"), ("2191.2", "9.0"), ("2191.0", "0.5")]
    assert shown(asks) == [("2191.6", "2.0"), ("2191.7", "4.0")]
    assert book_view(sync, 1) == ([lv("2191.4", "1.0")], [lv("2191.6", "2.0")])


def test_bybit_jump_is_a_gap_and_the_book_is_emptied_until_the_next_snapshot() -> None:
    sync = synced_bybit()
    gap = sync.on_update(bybit(219167608, [("2191.3", "1")]))
    assert gap == Gap("update id jumped from 219167606 to 219167608", 219167606, 219167608, None)
    assert sync.state is BookState.RESYNCING and sync.last_id is None
    assert sync.book.depth() == (0, 0) and book_view(sync) is None
    assert sync.on_update(bybit(219167609, [("2191.3", "1")])) is None  # ignored: no snapshot to apply to
    assert sync.book.depth() == (0, 0)
    assert sync.on_update(bybit_snap(219167700, [("2191.0", "1")], [("2191.1", "1")])) is None
    assert sync.state is BookState.SYNCED and sync.last_id == 219167700
    stats = sync.statistics()
    assert (stats.gaps, stats.updates_ignored, stats.resyncs, stats.snapshots) == (1, 1, 1, 2)


def test_bybit_repeated_or_older_delta_is_a_gap() -> None:
    sync = synced_bybit()
    assert sync.on_update(bybit_frame(ETH_DELTA)) is None
    gap = sync.on_update(bybit_frame(ETH_DELTA))
    assert gap is not None and gap.reason == "update id jumped from 219167607 to 219167607"


def test_bybit_delta_before_any_snapshot_is_ignored() -> None:
    sync = BybitBook()
    assert sync.on_update(bybit_frame(ETH_DELTA)) is None
    assert sync.state is BookState.WAITING and sync.book.depth() == (0, 0)
    assert not sync.needs_snapshot()
    assert sync.statistics().updates_ignored == 1


def test_bybit_depth1_snapshot_resent_with_the_same_u_is_fine() -> None:
    sync = BybitBook()
    for _ in range(3):
        assert sync.on_update(bybit_snap(500, [("10", "1")], [("11", "2")])) is None
    assert sync.state is BookState.SYNCED and sync.last_id == 500
    assert sync.statistics().gaps == 0


def test_bybit_u1_snapshot_restarts_the_sequence() -> None:
    sync = synced_bybit()
    assert sync.on_update(bybit_snap(1, [("2000", "1")], [("2001", "1")])) is None
    assert sync.on_update(bybit(2, [("1999", "3")])) is None
    assert sync.book.depth() == (2, 1) and sync.last_id == 2


def test_bybit_crossed_delta_is_a_gap() -> None:
    sync = synced_bybit()
    gap = sync.on_update(bybit(219167607, [("2191.6", "1")]))
    assert gap is not None and gap.reason == "crossed book: bid 2191.6 >= ask 2191.6"
    assert sync.state is BookState.RESYNCING and sync.book.depth() == (0, 0)
    assert sync.statistics().crossed == 1


def test_bybit_crossed_snapshot_is_a_gap() -> None:
    sync = BybitBook()
    gap = sync.on_update(bybit_snap(7, [("11", "1")], [("10", "1")]))
    assert gap is not None and gap.reason == "crossed book: bid 11 >= ask 10"
    assert book_view(sync) is None


# --- Binance spot (PROTOCOLS §2.6) ---------------------------------------------------------------------


def test_spot_needs_snapshot_once_buffering_starts_and_not_while_one_is_pending() -> None:
    sync = BinanceSpotBook()
    assert not sync.needs_snapshot()
    assert sync.on_update(upd(101, 105)) is None
    assert sync.state is BookState.WAITING and sync.needs_snapshot()
    sync.snapshot_requested()
    assert not sync.needs_snapshot()
    sync.snapshot_failed()
    assert sync.needs_snapshot()
    sync.snapshot_requested()
    assert sync.on_snapshot(snap(103, [("1", "1")], [("2", "1")])) is None
    assert sync.state is BookState.SYNCED and not sync.needs_snapshot()
    assert sync.last_id == 105


@pytest.mark.parametrize(("snapshot_id", "accepted"), [(99, False), (100, False), (101, True)])
def test_spot_snapshot_older_than_the_first_buffered_u_is_fetched_again(
    snapshot_id: int, accepted: bool
) -> None:
    # Official step 4: lastUpdateId strictly less than the first U → fetch again (even U - 1).
    sync = BinanceSpotBook()
    sync.on_update(upd(101, 105))
    sync.snapshot_requested()
    assert sync.on_snapshot(snap(snapshot_id, [("1", "1")])) is None
    assert (sync.state is BookState.SYNCED) == accepted
    assert sync.needs_snapshot() != accepted
    assert sync.statistics().snapshots_too_old == (0 if accepted else 1)


def test_spot_event_with_u_equal_to_last_update_id_is_dropped() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(98, 100, bids=[("5", "9")]))
    sync.on_update(upd(101, 102, bids=[("6", "1")]))
    assert sync.on_snapshot(snap(100, [("1", "1")])) is None
    assert shown(sync.book.levels()[0]) == [("6", "1"), ("1", "1")]  # 5 not re-applied
    assert sync.last_id == 102
    assert sync.statistics().updates_dropped_stale == 1


@pytest.mark.parametrize(("first", "gapped"), [(99, False), (101, False), (102, True)])
def test_spot_first_event_after_snapshot_must_contain_last_update_id_plus_one(
    first: int, gapped: bool
) -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(90, 95))
    sync.on_update(upd(first, 110, bids=[("2", "1")]))
    gap = sync.on_snapshot(snap(100, [("1", "1")]))
    assert (gap is not None) == gapped
    if gap is not None:
        assert gap == Gap("first event after snapshot 100 starts at 102, after 101", 100, 102, None)
        assert sync.state is BookState.RESYNCING and sync.book.depth() == (0, 0)
        assert sync.needs_snapshot()  # the offending event starts the new buffer
    else:
        assert sync.last_id == 110 and sync.book.depth() == (2, 0)


def test_spot_bridging_also_applies_to_events_arriving_after_the_snapshot() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(90, 95))
    assert sync.on_snapshot(snap(100, [("1", "1")])) is None  # 90..95 dropped, nothing to bridge yet
    assert sync.on_update(upd(99, 100, bids=[("5", "1")])) is None  # u == lastUpdateId: dropped
    assert sync.on_update(upd(101, 101, bids=[("6", "1")])) is None
    assert sync.book.depth() == (2, 0) and sync.last_id == 101
    assert sync.statistics().updates_dropped_stale == 2


def test_spot_stale_event_after_sync_is_ignored_and_a_jump_is_a_gap() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(101, 105))
    sync.on_snapshot(snap(103, [("1", "1")], [("3", "1")]))
    assert sync.on_update(upd(102, 104, bids=[("2", "7")])) is None  # u < book id: stale
    assert sync.book.best_bid() == lv("1", "1")
    assert sync.on_update(upd(106, 106, bids=[("2", "1")])) is None
    gap = sync.on_update(upd(108, 109))
    assert gap == Gap("update id jumped from 106 to 108", 106, 108, None)
    assert sync.state is BookState.RESYNCING and book_view(sync) is None and sync.needs_snapshot()
    # Resync from the buffered offending event.
    assert sync.on_snapshot(snap(108, [("1", "2")], [("3", "1")])) is None
    assert sync.state is BookState.SYNCED and sync.last_id == 109
    stats = sync.statistics()
    assert (stats.updates_dropped_stale, stats.gaps, stats.resyncs, stats.snapshots) == (1, 1, 1, 2)


def test_spot_buffer_overflow_is_a_gap_and_buffering_restarts() -> None:
    sync = BinanceSpotBook(max_buffer=3)
    for k in range(3):
        assert sync.on_update(upd(10 + k)) is None
    gap = sync.on_update(upd(13))
    assert gap is not None and gap.reason == "3 events buffered without a snapshot"
    assert sync.state is BookState.RESYNCING and sync.statistics().buffered == 1
    assert sync.on_snapshot(snap(12)) is None  # older than the new first U
    assert sync.on_snapshot(snap(13)) is None and sync.state is BookState.SYNCED


def test_spot_crossed_snapshot_is_a_gap_and_keeps_the_buffer() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(101, 105))
    gap = sync.on_snapshot(snap(103, [("5", "1")], [("4", "1")]))
    assert gap is not None and gap.reason == "crossed book: bid 5 >= ask 4"
    assert sync.state is BookState.RESYNCING and sync.needs_snapshot()
    assert sync.on_snapshot(snap(104, [("3", "1")], [("4", "1")])) is None
    assert sync.state is BookState.SYNCED and sync.statistics().crossed == 1


def test_spot_crossed_event_is_a_gap_with_an_empty_book() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(1))
    sync.on_snapshot(snap(1, [("3", "1")], [("4", "1")]))
    gap = sync.on_update(upd(2, asks=[("3.00", "1")]))
    assert gap is not None and gap.reason == "crossed book: bid 3 >= ask 3.00"
    assert sync.book.depth() == (0, 0) and book_view(sync) is None


def test_spot_snapshot_while_synced_is_ignored() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(1))
    sync.on_snapshot(snap(1, [("3", "1")]))
    assert sync.on_snapshot(snap(50, [("9", "9")])) is None
    assert sync.book.levels() == ([lv("3", "1")], []) and sync.last_id == 1
    assert sync.statistics().snapshots_ignored == 1


def test_spot_reset_goes_back_to_waiting() -> None:
    sync = BinanceSpotBook()
    sync.on_update(upd(1))
    sync.on_snapshot(snap(1, [("3", "1")]))
    sync.reset()
    assert sync.state is BookState.WAITING and sync.book.depth() == (0, 0)
    assert sync.last_id is None and not sync.needs_snapshot()


# --- Binance USD-M (PROTOCOLS §3) ----------------------------------------------------------------------


def test_usdm_drops_u_below_last_update_id_and_processes_u_equal() -> None:
    sync = BinanceUsdmBook()
    sync.on_update(upd(90, 99, 80, bids=[("5", "1")]))
    sync.on_update(upd(95, 100, 99, bids=[("6", "1")]))  # u == lastUpdateId: processed
    assert sync.on_snapshot(snap(100, [("1", "1")])) is None
    assert shown(sync.book.levels()[0]) == [("6", "1"), ("1", "1")]
    assert sync.last_id == 100 and sync.statistics().updates_dropped_stale == 1


@pytest.mark.parametrize(
    ("first", "last", "gapped"), [(100, 100, False), (100, 120, False), (101, 120, True)]
)
def test_usdm_first_event_must_span_last_update_id(first: int, last: int, gapped: bool) -> None:
    sync = BinanceUsdmBook()
    sync.on_update(upd(80, 90, 70))  # dropped: u < lastUpdateId
    sync.on_update(upd(first, last, 90))
    gap = sync.on_snapshot(snap(100, [("1", "1")]))
    assert (gap is not None) == gapped
    if gap is not None:
        assert gap.reason == "first event after snapshot 100 spans 101..120"
        assert sync.book.depth() == (0, 0) and sync.needs_snapshot()


def test_usdm_snapshot_older_than_the_first_buffered_event_is_fetched_again() -> None:
    sync = BinanceUsdmBook()
    sync.on_update(upd(101, 105, 90))
    assert sync.on_snapshot(snap(100)) is None
    assert sync.state is BookState.WAITING and sync.needs_snapshot()
    assert sync.statistics().snapshots_too_old == 1


def test_usdm_follows_pu_and_never_the_spot_u_rule() -> None:
    # Live frame ids from ccxt#26819: U is far beyond pu + 1 and that is normal on USD-M.
    sync = BinanceUsdmBook()
    sync.on_update(upd(9924360134200, 9924360134267, 9924360134100))
    assert sync.on_snapshot(snap(9924360134250, [("1", "1")])) is None
    assert sync.on_update(upd(9924360134447, 9924360134500, 9924360134267, bids=[("2", "1")])) is None
    assert sync.last_id == 9924360134500 and sync.book.depth() == (2, 0)
    gap = sync.on_update(upd(9924360134501, 9924360134600, 9924360134499))
    assert gap == Gap(
        "previous update id 9924360134499 is not the last one 9924360134500",
        9924360134500,
        9924360134501,
        9924360134499,
    )
    assert sync.state is BookState.RESYNCING and book_view(sync) is None and sync.needs_snapshot()


def test_usdm_repeated_event_after_sync_is_dropped_not_a_gap() -> None:
    # A replacement connection's first events repeat what the old one delivered: no false gap.
    sync = BinanceUsdmBook()
    sync.on_update(upd(100, 110, 90))
    sync.on_snapshot(snap(105))
    assert sync.on_update(upd(111, 120, 110, bids=[("2", "1")])) is None
    assert sync.on_update(upd(111, 120, 110, bids=[("2", "1")])) is None
    assert sync.on_update(upd(100, 110, 90)) is None
    assert sync.statistics().updates_dropped_stale >= 2 and sync.state is BookState.SYNCED
    assert sync.on_update(upd(121, 130, 120)) is None and sync.last_id == 130
    # A newer event whose pu skips one is still a gap.
    assert sync.on_update(upd(140, 150, 135)) is not None


def test_usdm_bridging_applies_to_events_arriving_after_the_snapshot() -> None:
    sync = BinanceUsdmBook()
    sync.on_update(upd(80, 90, 70))
    assert sync.on_snapshot(snap(100, [("1", "1")])) is None
    assert sync.on_update(upd(91, 99, 90, bids=[("5", "1")])) is None  # u < lastUpdateId: dropped
    assert sync.on_update(upd(100, 104, 99, bids=[("6", "1")])) is None
    assert sync.on_update(upd(107, 108, 104)) is None
    assert shown(sync.book.levels()[0]) == [("6", "1"), ("1", "1")] and sync.last_id == 108


def test_live_books_make_each_synchronizer_at_its_feeds_subscribed_depth() -> None:
    # Kraken's messages do not say the depth subscribed: the keeper's books get the feed's `book_depth`.
    from marketflow.exchanges.kraken import KrakenBook
    from marketflow.pipeline.bookkeeper import BookSpec, LiveBooks
    from marketflow.pipeline.gaps import GapLedger

    spec = BookSpec("kraken", "spot", "BTC-USD", "BTC/USD", "kraken-spot", "book:BTC/USD", 100)
    live = LiveBooks([spec], GapLedger())
    live.add_specs([attrs.evolve(spec, symbol="ETH-USD", native="ETH/USD", topic="book:ETH/USD", depth=25)])
    books = live.books
    assert all(isinstance(sync, KrakenBook) for sync in books.values())
    assert {key: sync.depth for key, sync in books.items() if isinstance(sync, KrakenBook)} == {
        ("kraken", "BTC-USD"): 100,
        ("kraken", "ETH-USD"): 25,
    }
