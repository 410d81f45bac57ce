"""Analytics over stored ranges: candles, order flow (with footprints) and volume profiles of trades the
live engine does not hold, aggregated where the database can do it exactly, finished by the same code
that formats live results.

Per engine (the store says which by what it offers; see ``marketflow/storage/aggregates.py``):

- PostgreSQL (``aggregate_bars`` / ``aggregate_cells``): prices and amounts are NUMERIC, so the server sums
  them exactly; one row per bar and one per (bar, bin) or bin comes back, never one per trade.
- SQLite (``scan_trades``): prices and amounts are TEXT and SQLite's arithmetic is floating point, so the
  range's trades are streamed in (ts, id) order, in chunks, on a worker thread, into the same
  :func:`~.bars.apply_trade` accumulator the live engine uses; memory holds bars and cells, not trades.

Either way the result is a list of :class:`~.bars.Bar` (or footprint-style cells) that ``candle_json``,
``order_flow_json`` and ``volume_profile`` turn into JSON, so there is one definition of every figure. The
trades the trade ring holds and storage does not yet (up to one flush interval) are merged in, ordered by
(ts, id) like stored ones. "First/last by (ts, arrival)" is (ts, id) here: storage keeps no arrival order.

Ranges are bounded by what they produce, not by trades: more than :data:`MAX_BARS` bars,
:data:`MAX_PROFILE_BINS` profile bins or :data:`MAX_FOOTPRINT_CELLS` footprint cells is a
:class:`RangeTooLargeError` naming the parameter to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from marketflow.analytics.bars import ASK, BID, Bar, apply_trade, bin_floor, default_bin
from marketflow.analytics.candles import candle_json
from marketflow.analytics.decimal_fmt import ZERO, exact
from marketflow.analytics.order_flow import DEFAULT_IMBALANCE_RATIO, DEFAULT_STACKED_MIN, order_flow_json
from marketflow.analytics.volume_profile import VolumeProfile, profile_json, volume_profile
from marketflow.model import Contract, Trade, notional

if TYPE_CHECKING:  # row types only: analytics does not import storage at run time
    from marketflow.storage.aggregates import BarRow, CellRow, ScanRow

__all__ = [
    "MAX_BARS",
    "MAX_FOOTPRINT_CELLS",
    "MAX_PROFILE_BINS",
    "RangeTooLargeError",
    "StoredRangeUnavailable",
    "range_bin",
    "stored_bars",
    "stored_candles",
    "stored_order_flow",
    "stored_profile_cells",
    "stored_volume_profile",
]

# Sized for what a client can use, not for what the server could compute (measured: ~190 bytes of JSON an
# order-flow bar, ~140 a footprint cell): 10,000 bars is more than a 4K screen has pixel columns (and
# /candles' own `limit`), about 2 MB; 10,000 profile bins more than it has pixel rows; 100,000 footprint
# cells, 50 price levels on each of 2,000 bars, about 14 MB (the old 1,000,000 allowed 140 MB and more).
MAX_BARS: Final = 10_000
"""Most bars (with trades) one stored-range query aggregates."""
MAX_PROFILE_BINS: Final = 10_000
"""Most traded bins of one stored-range volume profile."""
MAX_FOOTPRINT_CELLS: Final = 100_000
"""Most (bar, bin) cells of one stored-range order-flow footprint."""

_POS_INF = Decimal("Infinity")

Key = tuple[int, str]
"""(ts, id): the order of trades within a bar."""


class RangeTooLargeError(ValueError):
    """The range would produce more bars, bins or cells than one query computes; ``param`` says what to
    narrow or coarsen."""

    def __init__(self, detail: str, param: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.param = param


class StoredRangeUnavailable(LookupError):
    """The store offers neither SQL aggregates nor a trade scan."""


class RecentTrades(Protocol):
    """The trade ring, as far as ranges read it."""

    def recent(
        self,
        exchange: str,
        symbol: str,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Trade]: ...


@runtime_checkable
class RangeReads(Protocol):
    async def first_trade(
        self, exchange: str, symbol: str, since: int | None, until: int | None
    ) -> tuple[int, str, Decimal] | None: ...

    async def trade_ids(self, exchange: str, symbol: str, since: int, until: int | None) -> set[str]: ...


@runtime_checkable
class SqlAggregates(RangeReads, Protocol):
    """A store whose database aggregates exactly (PostgreSQL)."""

    async def aggregate_bars(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        step_us: int,
        large: Decimal | None,
        max_rows: int,
        contract: Contract | None = None,
    ) -> list[BarRow]: ...

    async def aggregate_cells(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        step_us: int | None,
        bin: Decimal,
        max_rows: int,
    ) -> list[CellRow]: ...

    async def first_trade_at(
        self, exchange: str, symbol: str, since: int, until: int, price: Decimal
    ) -> tuple[int, str] | None: ...


@runtime_checkable
class TradeScan(RangeReads, Protocol):
    """A store that streams trades for Python to aggregate (SQLite)."""

    async def scan_trades(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        consume: Callable[[Sequence[ScanRow]], bool],
    ) -> None: ...


def _reads(store: object) -> RangeReads:
    if isinstance(store, (SqlAggregates, TradeScan)):
        return store
    raise StoredRangeUnavailable(
        f"the {getattr(store, 'engine_name', 'configured')} store cannot aggregate ranges"
    )


def bar_span(since: int, until: int | None, step_us: int) -> tuple[int, int | None]:
    """Trade times ``[low, high)`` of the whole bars whose start is in ``[since, until)``."""
    low = since + (-since) % step_us
    high = None if until is None else (until - 1) - (until - 1) % step_us + step_us
    return low, high


# -- the ring's trades that are not stored yet -------------------------------------------------------------


async def unstored_trades(
    store: RangeReads, ring: RecentTrades | None, exchange: str, symbol: str, since: int, until: int | None
) -> list[Trade]:
    """The ring's trades with ``since <= ts < until`` and an amount > 0 that storage does not hold, by
    (ts, id). Reads the stored ids over the ring's span only (about the ring's size)."""
    if ring is None:
        return []
    held = [t for t in ring.recent(exchange, symbol, since, until) if t.amount > 0]
    if not held:
        return []
    stored = await store.trade_ids(exchange, symbol, min(t.ts for t in held), until)
    fresh = [t for t in held if t.id not in stored]
    fresh.sort(key=lambda t: (t.ts, t.id))
    return fresh


async def range_bin(
    store: object, ring: RecentTrades | None, exchange: str, symbol: str, since: int, until: int | None
) -> Decimal | None:
    """:func:`~.bars.default_bin` of the range's first trade by (ts, id) (stored or in the ring), or None."""
    first = await _reads(store).first_trade(exchange, symbol, since, until)
    if ring is not None:
        for trade in ring.recent(exchange, symbol, since, until):
            if trade.amount > 0 and (first is None or (trade.ts, trade.id) < (first[0], first[1])):
                first = (trade.ts, trade.id, trade.price)
    return None if first is None else default_bin(first[2])


# -- bars ---------------------------------------------------------------------------------------------------


async def stored_bars(
    store: object,
    ring: RecentTrades | None,
    exchange: str,
    symbol: str,
    since: int,
    until: int | None,
    step_us: int,
    *,
    large: Decimal | None = None,
    bin: Decimal | None = None,
    first: int | None = None,
    contract: Contract | None = None,
) -> list[Bar]:
    """The bars (with trades) of ``step_us`` whose start is in ``[since, until)``, ascending, with footprint
    cells at ``bin`` when given and ``large`` counting trades with a notional ≥ it when given (price·amount,
    or the market's ``contract`` notional where amounts are contracts).

    ``first``: only the first that many bars are wanted (no limit error); otherwise more than
    :data:`MAX_BARS` bars (or :data:`MAX_FOOTPRINT_CELLS` cells) is a :class:`RangeTooLargeError`.
    """
    reads = _reads(store)
    low, high = bar_span(since, until, step_us)
    if high is not None and high <= low:
        return []
    bars: dict[int, Bar] = {}
    keys: dict[int, list[Key]] = {}  # start → [first (ts, id), last (ts, id)]
    max_rows = first if first is not None else MAX_BARS + 1
    if isinstance(reads, SqlAggregates):
        rows = await reads.aggregate_bars(exchange, symbol, low, high, step_us, large, max_rows, contract)
        for row in rows:
            bars[row.start] = _bar_of_row(row, step_us)
            keys[row.start] = [(row.first_ts, row.first_id), (row.last_ts, row.last_id)]
        _check_bars(len(bars), first, exchange, symbol)
        if bin is not None and bars:
            cells = await reads.aggregate_cells(
                exchange, symbol, low, high, step_us, bin, MAX_FOOTPRINT_CELLS + 1
            )
            _check_cells(len(cells), exchange, symbol)
            with exact():
                for cell in cells:
                    bar = bars.get(cell.start)  # type: ignore[arg-type]  # per-bar rows have a start
                    if bar is not None:
                        bar.cells[cell.index * bin] = [cell.bid, cell.ask]
    else:
        assert isinstance(reads, TradeScan)
        scan = _BarScan(bars, keys, step_us, large, bin, first, exchange, symbol, contract)
        await reads.scan_trades(exchange, symbol, low, high, scan.consume)
        scan.finish()
    fresh = await unstored_trades(reads, ring, exchange, symbol, low, high)
    spelled = _merge_trades(bars, keys, fresh, step_us, large, bin, contract)
    firsts: dict[tuple[int, Decimal], Key | None] = {}
    for start, value, key, high in spelled:  # rare: see _merge_trades
        if (start, value) not in firsts:  # high and low at one price: one look-up
            firsts[start, value] = await _first_stored_at(reads, exchange, symbol, start, step_us, value)
        at, bar = firsts[start, value], bars[start]
        if at is None or key < at:  # the unstored trade is the first at the extreme (still the bar's)
            if high and bar.high == value:
                bar.high = value
            elif not high and bar.low == value:
                bar.low = value
    ordered = [bars[start] for start in sorted(bars)]
    if first is not None:
        return ordered[:first]
    _check_bars(len(ordered), None, exchange, symbol)
    return ordered


def _bar_of_row(row: BarRow, step_us: int) -> Bar:
    bar = Bar(row.start, row.start + step_us)
    bar.open, bar.open_ts = row.open, row.first_ts
    bar.close, bar.close_ts = row.close, row.last_ts
    bar.high, bar.low = row.high, row.low
    bar.buy, bar.sell, bar.pv = row.buy, row.sell, row.pv
    bar.trades, bar.large = row.trades, row.large
    return bar


def _check_bars(count: int, first: int | None, exchange: str, symbol: str) -> None:
    if first is None and count > MAX_BARS:
        raise RangeTooLargeError(
            f"the range holds more than {MAX_BARS} bars of {exchange} {symbol} with trades, more than one "
            "query computes from storage; narrow since/until or use a longer interval",
            "since",
        )


def _check_cells(count: int, exchange: str, symbol: str) -> None:
    if count > MAX_FOOTPRINT_CELLS:
        raise RangeTooLargeError(
            f"the footprint of the range would hold more than {MAX_FOOTPRINT_CELLS} (bar, bin) cells of "
            f"{exchange} {symbol}; use a larger bin, a longer interval or a narrower range",
            "bin",
        )


class _BarScan:
    """Folds streamed SQLite rows (ts, id order) into bars with the live engine's accumulator (on the
    scanning worker thread). Bars arrive one after another, so each is finished when the next begins."""

    def __init__(
        self,
        bars: dict[int, Bar],
        keys: dict[int, list[Key]],
        step_us: int,
        large: Decimal | None,
        size: Decimal | None,
        first: int | None,
        exchange: str,
        symbol: str,
        contract: Contract | None = None,
    ) -> None:
        self.contract = contract
        self.bars = bars
        self.keys = keys
        self.step = step_us
        self.large = large
        self.size = size
        self.limit = first if first is not None else MAX_BARS
        self.first = first
        self.market = (exchange, symbol)
        self.bar: Bar | None = None
        self.last: Key | None = None
        self.closed_cells = 0
        self.bin_low = _POS_INF  # [bin_low, bin_high): the last price's bin, so most rows skip a division
        self.bin_high = _POS_INF

    def consume(self, rows: Sequence[ScanRow]) -> bool:
        """Fold a chunk in; False when the wanted bars are complete (the next bar began)."""
        step, large, size, contract = self.step, self.large, self.size, self.contract
        bar = self.bar
        end = bar.end if bar is not None else 0
        last = self.last
        with exact():
            for ts, id_, price_text, amount_text, side in rows:
                amount = Decimal(amount_text)
                if amount <= 0:
                    continue
                price = Decimal(price_text)
                if bar is None or ts >= end:
                    if bar is not None and last is not None:
                        self.keys[bar.start][1] = last
                        self.closed_cells += len(bar.cells)
                    if len(self.bars) >= self.limit:
                        if self.first is not None:
                            self.bar, self.last = bar, last
                            return False
                        _check_bars(self.limit + 1, None, *self.market)
                    start = ts - ts % step
                    bar = self.bars[start] = Bar(start, start + step)
                    end = bar.end
                    self.keys[start] = [(ts, id_), (ts, id_)]
                key = None
                if size is not None:
                    if not self.bin_low <= price < self.bin_high:
                        self.bin_low = bin_floor(price, size)
                        self.bin_high = self.bin_low + size
                    key = self.bin_low
                is_large = large is not None and notional(price, amount, contract) >= large
                apply_trade(bar, price, amount, side == "buy", ts, is_large, key)
                last = (ts, id_)
        self.bar, self.last = bar, last
        if size is not None and bar is not None:
            _check_cells(self.closed_cells + len(bar.cells), *self.market)
        return True

    def finish(self) -> None:
        if self.bar is not None and self.last is not None:
            self.keys[self.bar.start][1] = self.last


async def _first_stored_at(
    reads: RangeReads, exchange: str, symbol: str, start: int, step_us: int, price: Decimal
) -> Key | None:
    """(ts, id) of the bar's first stored trade (amount > 0) at a price equal to ``price``, or None."""
    since, until = start, start + step_us
    if isinstance(reads, SqlAggregates):
        return await reads.first_trade_at(exchange, symbol, since, until, price)
    assert isinstance(reads, TradeScan)
    found: list[Key] = []

    def consume(rows: Sequence[ScanRow]) -> bool:
        for ts, id_, price_text, amount_text, _side in rows:
            if Decimal(price_text) == price and Decimal(amount_text) > 0:
                found.append((ts, id_))
                return False
        return True

    await reads.scan_trades(exchange, symbol, since, until, consume)
    return found[0] if found else None


def _merge_trades(
    bars: dict[int, Bar],
    keys: dict[int, list[Key]],
    trades: Sequence[Trade],
    step_us: int,
    large: Decimal | None,
    size: Decimal | None,
    contract: Contract | None = None,
) -> list[tuple[int, Decimal, Key, bool]]:
    """Add trades (by (ts, id)) that storage does not hold; open/close follow (ts, id) across both.

    High and low keep the spelling of the first trade at the extreme by (ts, id) ("65114.0", not a later
    "65114.00"). An unstored trade at a stored bar's extreme with another spelling is first when it comes
    before every stored trade of the bar, not when it comes after all of them; in between it depends on the
    first stored trade at that price, which the caller looks up: those cases (rare: an exchange writes one
    scale per market) are returned as (bar start, price, (ts, id), is high). Trades come by (ts, id), so
    the first unstored trade at or beyond a stored extreme decides it."""
    spelled: list[tuple[int, Decimal, Key, bool]] = []
    extremes: dict[int, list[Decimal | None]] = {}  # start → stored [high, low] not decided yet, else None
    with exact():
        for trade in trades:
            ts, price, amount = trade.ts, trade.price, trade.amount
            start = ts - ts % step_us
            key: Key = (ts, trade.id)
            bar = bars.get(start)
            if bar is None:
                bar = bars[start] = Bar(start, start + step_us)
                keys[start] = [key, key]
                bounds = stored = None
            else:
                bounds = keys[start]
                stored = extremes.get(start)
                if stored is None:
                    stored = extremes[start] = [bar.high, bar.low]
            saved = (bar.open, bar.open_ts, bar.close, bar.close_ts)
            is_large = large is not None and notional(price, amount, contract) >= large
            apply_trade(
                bar,
                price,
                amount,
                trade.side == "buy",
                ts,
                is_large,
                None if size is None else bin_floor(price, size),
            )
            if bounds is None or stored is None:  # a bar of unstored trades only: arrival is (ts, id)
                continue
            # apply_trade takes arrival order; a stored trade at the same ts may come after this one by id.
            bar.open, bar.open_ts, bar.close, bar.close_ts = saved
            before, after = key < bounds[0], key > bounds[1]
            for index, high in ((0, True), (1, False)):
                extreme = stored[index]
                if extreme is None or (price < extreme if high else price > extreme):
                    continue
                stored[index] = None  # beyond it (a new extreme) or at it: decided by this trade
                if price != extreme or price.as_tuple() == extreme.as_tuple() or after:
                    continue
                if before:
                    if high:
                        bar.high = price
                    else:
                        bar.low = price
                else:
                    spelled.append((start, price, key, high))
            if before:
                bar.open, bar.open_ts, bounds[0] = price, ts, key
            if after:
                bar.close, bar.close_ts, bounds[1] = price, ts, key
    return spelled


# -- volume profile cells -----------------------------------------------------------------------------------


async def stored_profile_cells(
    store: object,
    ring: RecentTrades | None,
    exchange: str,
    symbol: str,
    since: int,
    until: int | None,
    size: Decimal,
) -> dict[Decimal, list[Decimal]]:
    """Volume per bin (→ [sell-taker, buy-taker]) of the trades with ``since <= ts < until``."""
    reads = _reads(store)
    cells: dict[Decimal, list[Decimal]] = {}
    if isinstance(reads, SqlAggregates):
        rows = await reads.aggregate_cells(exchange, symbol, since, until, None, size, MAX_PROFILE_BINS + 1)
        _check_bins(len(rows), exchange, symbol)
        with exact():
            for row in rows:
                cells[row.index * size] = [row.bid, row.ask]
    else:
        assert isinstance(reads, TradeScan)
        scan = _CellScan(cells, size, exchange, symbol)
        await reads.scan_trades(exchange, symbol, since, until, scan.consume)
    fresh = await unstored_trades(reads, ring, exchange, symbol, since, until)
    with exact():
        for trade in fresh:
            key = bin_floor(trade.price, size)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = [ZERO, ZERO]
            cell[ASK if trade.side == "buy" else BID] += trade.amount
    _check_bins(len(cells), exchange, symbol)
    return cells


def _check_bins(count: int, exchange: str, symbol: str) -> None:
    if count > MAX_PROFILE_BINS:
        raise RangeTooLargeError(
            f"the volume profile of the range would hold more than {MAX_PROFILE_BINS} bins of {exchange} "
            f"{symbol}; use a larger bin or a narrower range",
            "bin",
        )


class _CellScan:
    def __init__(
        self, cells: dict[Decimal, list[Decimal]], size: Decimal, exchange: str, symbol: str
    ) -> None:
        self.cells = cells
        self.size = size
        self.market = (exchange, symbol)
        self.low = _POS_INF
        self.high = _POS_INF
        self.cell: list[Decimal] = [ZERO, ZERO]

    def consume(self, rows: Sequence[ScanRow]) -> bool:
        cells, size = self.cells, self.size
        low, high, cell = self.low, self.high, self.cell
        with exact():
            for _ts, _id, price_text, amount_text, side in rows:
                amount = Decimal(amount_text)
                if amount <= 0:
                    continue
                price = Decimal(price_text)
                if not low <= price < high:
                    low = bin_floor(price, size)
                    high = low + size
                    got = cells.get(low)
                    if got is None:
                        got = cells[low] = [ZERO, ZERO]
                    cell = got
                cell[ASK if side == "buy" else BID] += amount
        self.low, self.high, self.cell = low, high, cell
        _check_bins(len(cells), *self.market)
        return True


# -- JSON of stored ranges ----------------------------------------------------------------------------------


async def stored_candles(
    store: object,
    ring: RecentTrades | None,
    exchange: str,
    symbol: str,
    step_us: int,
    since: int,
    until: int | None,
    limit: int | None,
) -> dict[str, Any]:
    """``/candles`` JSON: the first ``limit`` candles starting in ``[since, until)``."""
    bars = await stored_bars(store, ring, exchange, symbol, since, until, step_us, first=limit)
    return {"candles": [candle_json(bar) for bar in bars]}


async def stored_order_flow(
    store: object,
    ring: RecentTrades | None,
    exchange: str,
    symbol: str,
    step_us: int,
    since: int,
    until: int | None,
    *,
    large_trade_notional: Decimal,
    contract: Contract | None = None,
    footprint_bin: Decimal | None = None,
    imbalance_ratio: Decimal = DEFAULT_IMBALANCE_RATIO,
    stacked_min: int = DEFAULT_STACKED_MIN,
) -> dict[str, Any]:
    """``/order-flow`` JSON of the bars starting in ``[since, until)``; footprints at ``footprint_bin``."""
    bars = await stored_bars(
        store,
        ring,
        exchange,
        symbol,
        since,
        until,
        step_us,
        large=large_trade_notional,
        bin=footprint_bin,
        contract=contract,
    )
    return order_flow_json(
        bars,
        footprint_bin=footprint_bin,
        cells_bin=footprint_bin,
        imbalance_ratio=imbalance_ratio,
        stacked_min=stacked_min,
    )


async def stored_volume_profile(
    store: object,
    ring: RecentTrades | None,
    exchange: str,
    symbol: str,
    since: int,
    until: int | None,
    *,
    bin: Decimal | None,
    value_area: Decimal,
) -> dict[str, Any]:
    """``/volume-profile`` JSON of the trades with ``since <= ts < until``; ``bin`` None: the default bin
    of the range's first trade."""
    size = bin if bin is not None else await range_bin(store, ring, exchange, symbol, since, until)
    if size is None:
        return profile_json(VolumeProfile(None, None, None, ZERO, ZERO, ()))
    cells = await stored_profile_cells(store, ring, exchange, symbol, since, until, size)
    return profile_json(volume_profile(cells, size, value_area))
