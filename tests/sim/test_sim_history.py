"""The simulator's memory stays bounded however long it runs: trade history, format caches, REST on top.

The history is checked against a brute-force reference (a plain list of every row) with hypothesis, then
driven far past its bound the way `marketflow sim --trade-while-unsubscribed` drives it (a paced feed with
nobody subscribed, under `autojump_clock`). Memory is measured with tracemalloc (Python allocations, not
RSS), so the figures are the same on every run.
"""

from __future__ import annotations

import argparse
import tracemalloc

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from marketflow.sim import SimConfig, add_arguments, sim_config_from_args
from marketflow.sim.history import BLOCK_ROWS, TradeHistory, TradeRow
from marketflow.sim.market import (
    DEFAULT_TRADE_HISTORY,
    FORMAT_CACHE_LIMIT,
    ROW_ID,
    ROW_SEQ,
    Formats,
    Market,
    TradeFeed,
    instrument_for,
)
from tests.sim.test_sim_binance import http_get, start


def fake_rows(start: int, count: int) -> list[TradeRow]:
    return [(str(n), "1.0", "2.0", "Buy", n, n, "PlusTick", n) for n in range(start, start + count)]


@settings(max_examples=60, deadline=None)
@given(
    limit=st.sampled_from([0, 1, 100, BLOCK_ROWS - 1, BLOCK_ROWS, 700, 3 * BLOCK_ROWS]),
    batches=st.lists(st.integers(0, 3 * BLOCK_ROWS), min_size=1, max_size=30),
    data=st.data(),
)
def test_history_reads_like_the_tail_of_every_row(
    limit: int, batches: list[int], data: st.DataObject
) -> None:
    history = TradeHistory(limit)
    everything: list[TradeRow] = []
    for count in batches:
        rows = fake_rows(len(everything), count)
        history.extend(rows)
        everything += rows
        kept = len(history)
        if limit == 0:
            assert kept == 0
            continue
        assert min(limit, len(everything)) <= kept < limit + BLOCK_ROWS
        assert history.unpacked < BLOCK_ROWS
        reference = everything[len(everything) - kept :]
        assert history.rows() == reference
        start = data.draw(st.integers(-kept - 2, kept + 2))
        stop = data.draw(st.none() | st.integers(-kept - 2, kept + 2))
        assert history.rows(start, stop) == reference[start:stop]
        newest = data.draw(st.integers(0, kept + 2))
        assert history.latest(newest) == reference[len(reference) - min(newest, kept) :]


async def test_trading_unsubscribed_for_half_an_hour_keeps_the_history_at_its_bound(
    autojump_clock: trio.abc.Clock,
) -> None:
    # `--trade-while-unsubscribed`: a paced feed with nobody subscribed only ever feeds the history.
    limit = SimConfig().trade_history
    market = Market(seed=5, history=limit)
    tape = market.tape("linear", "S000USDT")
    feed = TradeFeed(market, tape, rate=20.0, trades_per_frame=(4, 4), max_frames=None, keep_running=True)
    with trio.move_on_after(1800.0):
        await feed.run()
    assert market.trades_generated > 40 * limit
    assert limit <= len(tape.history) < limit + BLOCK_ROWS
    assert tape.history.unpacked < BLOCK_ROWS
    kept = tape.history.rows()
    twin = Market(seed=5).tape("linear", "S000USDT").take(market.trades_generated, 0)  # same trades, uncut
    assert [r[ROW_ID] for r in kept] == [r[ROW_ID] for r in twin[-len(kept) :]]
    assert [r[ROW_SEQ] for r in kept] == [r[ROW_SEQ] for r in twin[-len(kept) :]]


def test_a_tape_costs_the_same_memory_after_ten_times_its_bound_as_after_two() -> None:
    market = Market(seed=6)  # the bound the server uses by default
    tape = market.tape("linear", "S001USDT")
    limit = SimConfig().trade_history

    def trade_until(total: int) -> None:
        while market.trades_generated < total:
            market.cut_frames(tape, 20, (1, 3))  # frames nobody takes: only the history keeps trades

    tracemalloc.start()
    try:
        trade_until(2 * limit)
        after_two = tracemalloc.get_traced_memory()[0]
        trade_until(10 * limit)
        after_ten = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Packed, a trade costs ~80 bytes (as tuples and strings ~300); the tuples of one unpacked block and
    # the bounded format caches come on top.
    budget = limit * 100 + BLOCK_ROWS * 300 + 2 * FORMAT_CACHE_LIMIT * 130
    assert after_two < budget and after_ten < budget
    assert abs(after_ten - after_two) < BLOCK_ROWS * 300 + 2 * FORMAT_CACHE_LIMIT * 130


def test_format_caches_stay_bounded_and_exact() -> None:
    formats = Formats(instrument_for("linear", "S002USDT"))
    prices = formats.prices  # callers keep the dict: it must be emptied in place, not replaced
    for ticks in range(1, 10 * FORMAT_CACHE_LIMIT):
        assert (prices.get(ticks) or formats.price(ticks)) == f"{ticks / 10_000:.4f}"
        assert len(prices) <= FORMAT_CACHE_LIMIT
        size = formats.sizes.get(ticks) or formats.size(ticks)
        assert formats.size_steps(size) == ticks and len(formats.sizes) <= FORMAT_CACHE_LIMIT
    assert prices is formats.prices


async def test_rest_answers_in_full_from_the_packed_history(nursery: trio.Nursery) -> None:
    server = await start(nursery, rate=10.0)  # nobody subscribes: the tapes below are cut by hand
    market = server.market
    limit = SimConfig().trade_history
    agg = market.tape("usdm", "BTCUSDT", "binance")
    linear = market.tape("linear", "BTCUSDT")
    while market.trades_generated < 3 * limit:
        market.cut_frames(agg, 50, (1, 4))
    while market.trades_generated < 6 * limit:
        market.cut_frames(linear, 50, (1, 3))
    truth = server.generated_trades("binance", "usdm", "BTCUSDT")
    assert limit <= len(truth) < limit + BLOCK_ROWS
    oldest = int(truth[0].id)
    middle = len(truth) // 2 - 3
    with trio.fail_after(10):
        _, _, old = await http_get(
            server, f"/fapi/v1/aggTrades?symbol=BTCUSDT&fromId={oldest - 9000}&limit=7"
        )
        _, _, page = await http_get(
            server, f"/fapi/v1/aggTrades?symbol=BTCUSDT&fromId={oldest + middle}&limit=1000"
        )
        _, _, default = await http_get(server, "/fapi/v1/aggTrades?symbol=BTCUSDT")
        _, _, recent = await http_get(
            server, "/v5/market/recent-trade?category=linear&symbol=BTCUSDT&limit=1000"
        )
    assert [t["a"] for t in old] == list(range(oldest, oldest + 7))  # older than kept: from the oldest
    assert [(t["a"], t["p"], t["q"], t["f"], t["l"], t["T"]) for t in page] == [
        (int(t.id), t.price, t.size, t.seq, t.last_seq, t.ts_ms) for t in truth[middle : middle + 1000]
    ]
    assert [t["a"] for t in default] == [int(t.id) for t in truth[-500:]]
    linear_truth = server.generated_trades("bybit", "linear", "BTCUSDT")
    assert [(t["execId"], t["price"], t["seq"]) for t in recent["result"]["list"]] == [
        (t.id, t.price, str(t.seq)) for t in reversed(linear_truth[-1000:])
    ]


def test_the_command_line_sets_the_history_bound() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert sim_config_from_args(parser.parse_args([])).trade_history == DEFAULT_TRADE_HISTORY
    assert sim_config_from_args(parser.parse_args(["--trade-history", "1000"])).trade_history == 1000
