"""The analytics actor: trade batches from the bus → live candles, order flow, footprints and profiles.

Per (exchange, symbol) it keeps the open bar of every configured interval and a window of the last
``max_bars`` closed bars per interval (see ``series.py``), with footprint cells at the market's bin: the
configured ``analytics.bin_size``, else :func:`~.bars.default_bin` of the first trade it sees.

Closed candles go to ``persist`` (a synchronous callable taking a list; the daemon wires it to the
``candles`` table, PK exchange, symbol, interval, start: write it as an upsert). A bar closes when a trade
of a later bar arrives, or once the clock is ``close_grace_s`` past its end (checked every ``tick_s``), and
when the input ends. A late trade (its time before the open bar) corrects the bars it belongs to, and a
corrected closed candle is handed to ``persist`` again.

Queries answer from live data only, in the SPEC §6 shapes, and equal the ``compute_*_from_trades``
functions over the same trades:

- ``candles``/``order_flow``: the bars whose start is in ``[since, until)`` that the engine holds
  (:meth:`AnalyticsEngine.live_since` says from when its data is complete);
- ``volume_profile``: exact or :class:`NotLiveError` — it sums whole bars of the coarsest interval whose
  bars each lie entirely inside or outside ``[since, until)`` (by their trades' times);
- a bin must be a multiple of the market's bin, an interval one of the configured ones, else
  :class:`NotLiveError`: compute it from stored trades instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, localcontext
from typing import Any

import attrs
import trio

from marketflow.analytics.bars import (
    Bar,
    default_bin,
    merge_into,
    normalize_bin,
    parse_interval,
    regroup_cells,
)
from marketflow.analytics.candles import Candle, candle_from_bar, candle_json, limit_bars, select_bars
from marketflow.analytics.decimal_fmt import EXACT, ZERO, exact
from marketflow.analytics.order_flow import DEFAULT_IMBALANCE_RATIO, DEFAULT_STACKED_MIN, order_flow_json
from marketflow.analytics.series import IntervalSeries, MarketBars
from marketflow.analytics.volume_profile import VolumeProfile, profile_json, volume_profile
from marketflow.config import AnalyticsConfig
from marketflow.model import Contract, Trade, now_us
from marketflow.runtime.bus import Subscription, receive_batches

__all__ = ["AnalyticsEngine", "AnalyticsFeeder", "AnalyticsStatistics", "NotLiveError"]


class NotLiveError(LookupError):
    """The engine does not hold what the query needs live; compute it from stored trades instead."""


@attrs.frozen
class AnalyticsStatistics:
    """Counters of the engine. ``late``: trades before their market's open bar; ``late_dropped``: late trades
    whose bar the engine no longer (or never) held; ``ignored``: trades with an amount ≤ 0."""

    name: str
    state: str
    trades: int
    batches: int
    ignored: int
    late: int
    late_dropped: int
    candles_emitted: int
    markets: int
    intervals: tuple[str, ...]


class AnalyticsEngine:
    """Consumes ``Subscription[Trade]`` and serves live analytics; see the module docstring."""

    def __init__(
        self,
        subscription: Subscription[Trade] | None,
        config: AnalyticsConfig,
        *,
        persist: Callable[[list[Candle]], None] | None = None,
        name: str = "analytics",
        max_bars: int = 1000,
        close_grace_s: float = 2.0,
        tick_s: float = 1.0,
        clock: Callable[[], int] = now_us,
        imbalance_ratio: Decimal = DEFAULT_IMBALANCE_RATIO,
        stacked_min: int = DEFAULT_STACKED_MIN,
        contracts: Mapping[tuple[str, str], Contract] | None = None,
    ) -> None:
        if max_bars < 1:
            raise ValueError(f"max_bars must be >= 1, got {max_bars}")
        self.name = name
        self._subscription = subscription
        self._persist = persist
        self._max_bars = max_bars
        self._grace_us = int(close_grace_s * 1_000_000)
        self._tick_s = tick_s
        self._clock = clock
        self._imbalance_ratio = imbalance_ratio
        self._stacked_min = stacked_min
        self._value_area = config.value_area
        self._large = config.large_trade_notional
        # (exchange, symbol) → its Contract where amounts are contracts (kept fresh by the daemon): the
        # large-trade test then uses the contract's notional (SPEC §11) instead of price·amount.
        self._contracts: Mapping[tuple[str, str], Contract] = {} if contracts is None else contracts
        self._bins = {symbol: normalize_bin(size) for symbol, size in config.bin_size.items()}
        intervals: dict[int, str] = {}
        for text in config.candle_intervals:
            intervals.setdefault(parse_interval(text), text)
        if not intervals:
            raise ValueError("analytics needs at least one candle interval")
        self._intervals = intervals  # µs → configured spelling, in configuration order
        self._base_us = math.gcd(*intervals)
        self._markets: dict[tuple[str, str], MarketBars] = {}
        self._pending: dict[tuple[str, str, str, int], tuple[MarketBars, IntervalSeries, Bar]] = {}
        self._state = "idle"
        self._trades = 0
        self._batches = 0
        self._ignored = 0
        self._emitted = 0

    # -- the actor ------------------------------------------------------------------------------------------

    def statistics(self) -> AnalyticsStatistics:
        markets = self._markets.values()
        return AnalyticsStatistics(
            name=self.name,
            state=self._state,
            trades=self._trades,
            batches=self._batches,
            ignored=self._ignored,
            late=sum(market.late for market in markets),
            late_dropped=sum(market.late_dropped for market in markets),
            candles_emitted=self._emitted,
            markets=len(self._markets),
            intervals=tuple(self._intervals.values()),
        )

    def feeder(self) -> AnalyticsFeeder:
        """A new actor taking trade batches from the engine's subscription into it."""
        if self._subscription is None:
            raise RuntimeError(f"analytics engine {self.name!r} has no subscription to run on")
        return AnalyticsFeeder(self._subscription, self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume the subscription until it ends; then close every open bar and hand it to ``persist``."""
        await self.feeder().run(task_status=task_status)

    # -- feeding --------------------------------------------------------------------------------------------

    def ingest(self, trades: Iterable[Trade]) -> None:
        """Add trades (in arrival order) and hand closed or corrected candles to ``persist``."""
        with localcontext(EXACT):
            self._add(trades)
        self._emit()

    def close_due(self, now: int | None = None) -> None:
        """Close bars that ended ``close_grace_s`` before ``now`` (default: the clock) and persist them."""
        watermark = (self._clock() if now is None else now) - self._grace_us
        with localcontext(EXACT):
            for market in self._markets.values():
                market.close_until(watermark, self._enqueue)
        self._emit()

    def flush(self) -> None:
        """Close every open bar and persist it (the input ended). Later trades only correct closed bars."""
        with localcontext(EXACT):
            for market in self._markets.values():
                market.close_all(self._enqueue)
        self._emit()

    def _add(self, trades: Iterable[Trade]) -> None:
        # The hot path (inside the EXACT context): a trade in its market's open base bar updates that bar
        # and nothing else; everything else goes to MarketBars.add_slow.
        markets = self._markets
        large_notional = self._large
        contracts = self._contracts
        contract: Contract | None = None
        enqueue = self._enqueue
        market: MarketBars | None = None
        last_exchange = last_symbol = ""
        count = ignored = 0
        for trade in trades:
            count += 1
            amount = trade.amount
            if amount <= ZERO:
                ignored += 1
                continue
            price = trade.price
            ts = trade.ts
            if market is None or trade.symbol != last_symbol or trade.exchange != last_exchange:
                last_exchange = trade.exchange
                last_symbol = trade.symbol
                market = markets.get((last_exchange, last_symbol))
                if market is None:
                    market = self._new_market(last_exchange, last_symbol, price, ts)
                contract = contracts.get((last_exchange, last_symbol)) if contracts else None
            pv = price * amount
            large = (pv if contract is None else contract.notional(price, amount)) >= large_notional
            bar = market.base
            if bar is None or ts < bar.start or ts >= bar.end:
                market.add_slow(price, amount, trade.side == "buy", ts, large, enqueue)
                continue
            if large:
                bar.large += 1
            bar.pv += pv
            bar.trades += 1
            if price > bar.high:
                bar.high = price
            elif price < bar.low:
                bar.low = price
            if ts >= bar.close_ts:
                bar.close = price
                bar.close_ts = ts
            elif ts < bar.open_ts:
                bar.open = price
                bar.open_ts = ts
            if price < market.bin_low or price >= market.bin_high:
                market.rebin(price)
            key = market.bin_low
            cell = bar.cells.get(key)
            if trade.side == "buy":
                bar.buy += amount
                if cell is None:
                    bar.cells[key] = [ZERO, amount]
                else:
                    cell[1] += amount
            else:
                bar.sell += amount
                if cell is None:
                    bar.cells[key] = [amount, ZERO]
                else:
                    cell[0] += amount
        self._trades += count
        self._ignored += ignored
        self._batches += 1

    def _new_market(self, exchange: str, symbol: str, price: Decimal, ts: int) -> MarketBars:
        size = self._bins.get(symbol) or default_bin(price)
        series = [IntervalSeries(text, us, self._max_bars) for us, text in self._intervals.items()]
        market = self._markets[exchange, symbol] = MarketBars(
            exchange, symbol, size, self._base_us, series, ts
        )
        return market

    def _enqueue(self, market: MarketBars, series: IntervalSeries, bar: Bar) -> None:
        # Keyed by the candle's PK: a bar corrected several times between two emits is written once.
        self._pending[market.exchange, market.symbol, series.interval, bar.start] = (market, series, bar)

    def _emit(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._emitted += len(pending)
        if self._persist is not None:
            self._persist(
                [
                    candle_from_bar(bar, market.exchange, market.symbol, series.interval)
                    for market, series, bar in pending.values()
                ]
            )

    # -- queries --------------------------------------------------------------------------------------------

    def markets(self) -> list[tuple[str, str]]:
        """Every (exchange, symbol) seen so far."""
        return list(self._markets)

    def bin_size(self, exchange: str, symbol: str) -> Decimal | None:
        """The bin the market's footprint cells use (None before its first trade)."""
        market = self._markets.get((exchange, symbol))
        return None if market is None else market.bin

    def live_since(self, exchange: str, symbol: str, interval: str) -> int | None:
        """Time from which the engine's bars of ``interval`` hold every trade it was sent (None: no data).

        A range with ``since`` at or after it is answered completely from live data.
        """
        market = self._markets.get((exchange, symbol))
        if market is None:
            return None
        series = self._series(market, interval)
        return max(market.first_ts, series.evicted_until)

    def candles(
        self,
        exchange: str,
        symbol: str,
        interval: str,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``/candles`` JSON from live bars (the open candle last, as it stands)."""
        parse_interval(interval)
        market = self._markets.get((exchange, symbol))
        if market is None:
            self._check_interval(interval)
            return {"candles": []}
        series = self._series(market, interval)
        with exact():
            bars = select_bars(series.view(market.base, cells=False), since, until)
        return {
            "candles": [candle_json(bar) for bar in limit_bars(bars, limit, from_start=since is not None)]
        }

    def order_flow(
        self,
        exchange: str,
        symbol: str,
        interval: str,
        since: int | None = None,
        until: int | None = None,
        footprint: bool = False,
        bin: Decimal | None = None,
    ) -> dict[str, Any]:
        """``/order-flow`` JSON from live bars; footprints at ``bin`` (default: the market's bin)."""
        parse_interval(interval)
        market = self._markets.get((exchange, symbol))
        if market is None:
            self._check_interval(interval)
            return {"bars": []}
        series = self._series(market, interval)
        size = self._footprint_bin(market, bin) if footprint else None
        with exact():
            bars = select_bars(series.view(market.base, cells=footprint), since, until)
        return order_flow_json(
            bars,
            footprint_bin=size,
            cells_bin=market.bin,
            imbalance_ratio=self._imbalance_ratio,
            stacked_min=self._stacked_min,
        )

    def bars(
        self, exchange: str, symbol: str, interval: str, since: int | None, until: int | None
    ) -> list[Bar]:
        """Copies of the live bars (with trades, without footprint cells) starting in ``[since, until)``,
        for views that combine markets (``analytics/assets.py``); :class:`NotLiveError` as the queries."""
        parse_interval(interval)
        market = self._markets.get((exchange, symbol))
        if market is None:
            self._check_interval(interval)
            return []
        series = self._series(market, interval)
        with exact():
            chosen = select_bars(series.view(market.base, cells=False), since, until)
            return [bar.copy(cells=False) for bar in chosen]

    def volume_profile(
        self,
        exchange: str,
        symbol: str,
        since: int | None = None,
        until: int | None = None,
        bin: Decimal | None = None,
    ) -> dict[str, Any]:
        """``/volume-profile`` JSON over live trades with ``since ≤ ts < until``, or :class:`NotLiveError`."""
        market = self._markets.get((exchange, symbol))
        if market is None:
            if bin is not None:
                normalize_bin(bin)
            return profile_json(VolumeProfile(None, None, None, ZERO, ZERO, ()))
        size = self._footprint_bin(market, bin)
        with exact():
            for series in sorted(market.series, key=lambda item: item.interval_us, reverse=True):
                chosen = _whole_bars(series.view(market.base, cells=True), since, until)
                if chosen is None:
                    continue
                cells: dict[Decimal, list[Decimal]] = {}
                total = Bar(0, 0)
                total.cells = cells
                for bar in chosen:
                    merge_into(total, bar)
                if size != market.bin:
                    cells = regroup_cells(cells, size)
                return profile_json(volume_profile(cells, size, self._value_area))
        raise NotLiveError(
            f"no live interval of {exchange} {symbol} has bars that lie wholly inside or outside "
            f"[{since}, {until}); align the range to an interval or compute it from stored trades"
        )

    def _series(self, market: MarketBars, interval: str) -> IntervalSeries:
        interval_us = self._check_interval(interval)
        for series in market.series:
            if series.interval_us == interval_us:
                return series
        raise AssertionError("every market has a series per interval")

    def _check_interval(self, interval: str) -> int:
        interval_us = parse_interval(interval)
        if interval_us not in self._intervals:
            configured = ", ".join(self._intervals.values())
            raise NotLiveError(f"interval {interval!r} is not computed live (configured: {configured})")
        return interval_us

    def _footprint_bin(self, market: MarketBars, bin: Decimal | None) -> Decimal:
        if bin is None:
            return market.bin
        size = normalize_bin(bin)
        with exact():
            if size % market.bin:
                raise NotLiveError(
                    f"bin {size} is not a multiple of the live bin {market.bin} of "
                    f"{market.exchange} {market.symbol}; compute it from stored trades"
                )
        return size


class AnalyticsFeeder:
    """Takes trade batches from a subscription into an `AnalyticsEngine`; an actor, a fresh one per start.

    The engine (its bars) outlives the feeder: a restart goes on from the trades still queued. Like a
    batch the drop-oldest subscription discards, one the feeder had in hand when it failed is lost to the
    live view only (storage has it).
    """

    def __init__(self, subscription: Subscription[Trade], engine: AnalyticsEngine) -> None:
        self.name = engine.name
        self._subscription = subscription
        self._engine = engine

    def statistics(self) -> AnalyticsStatistics:
        return self._engine.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume the subscription until it ends; then close every open bar and hand it to ``persist``."""
        engine = self._engine
        engine._state = "running"
        try:
            with self._subscription.receiver() as receiver:
                async with trio.open_nursery() as nursery:
                    # The clock is checked in a task of its own: a deadline around every receive would cost
                    # the consumer a cancel scope per wake-up.
                    nursery.start_soon(self._close_on_the_clock)
                    task_status.started()
                    await self._consume(receiver)
                    nursery.cancel_scope.cancel()
            engine.flush()
        finally:
            engine._state = "stopped"

    async def _consume(self, receiver: trio.MemoryReceiveChannel[list[Trade]]) -> None:
        engine = self._engine
        while True:
            try:
                batches = await receive_batches(receiver)
            except trio.EndOfChannel:
                return
            with localcontext(EXACT):
                for batch in batches:
                    engine._add(batch)
            engine._emit()

    async def _close_on_the_clock(self) -> None:
        while True:
            await trio.sleep(self._engine._tick_s)
            self._engine.close_due()


def _whole_bars(bars: Sequence[Bar], since: int | None, until: int | None) -> list[Bar] | None:
    """The bars whose trades all lie in ``[since, until)``, or None if a bar has trades on both sides."""
    chosen: list[Bar] = []
    for bar in bars:
        first, last = bar.open_ts, bar.close_ts
        if (since is not None and last < since) or (until is not None and first >= until):
            continue
        if (since is not None and first < since) or (until is not None and last >= until):
            return None
        chosen.append(bar)
    return chosen
