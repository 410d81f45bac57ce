"""Live tickers and derivatives per symbol, merged exactly, and what of them is stored (SPEC §12).

Decoders emit partial records (`Ticker`, `DerivativesTick`: None = not in this message). `LiveMarketData`
merges them field by field: a field takes a record's value only if the record is not older than the one
that last set it, so out-of-order ticks never roll a field back, and a field a delta omits keeps its value.

What it hands on for storage:
- `derivatives`: one row per symbol per `sample_interval_s` bucket (of exchange time) in which a field
  changed — the merged state at the bucket's last change. A bucket is emitted when a later bucket's record
  arrives, or when the local clock has left it (`close_buckets`), or at stop (`flush`).
- `quotes`: every change of the merged best bid/ask (with `store_quotes`).
- `liquidations`: every event once (a recently seen identity is dropped).

Recent samples and liquidations stay in memory (bounded per symbol) for order-flow bars.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import attrs
import msgspec

from marketflow.model import (
    DERIVATIVES_FIELDS,
    TICKER_FIELDS,
    DerivativesTick,
    Liquidation,
    MarketData,
    Ticker,
)

Key = tuple[str, str]
RECENT_SAMPLES = 120
"""Derivatives samples kept in memory per symbol (2 min at one a second): the ones storage may not have yet
(its sink writes every second); order-flow bars and `/derivatives` read older ones from storage."""
RECENT_LIQUIDATIONS = 200
"""Liquidations kept in memory per symbol, for the same reason and to drop a repeated one before storage
(which keeps each identity once anyway). A few hundred bytes each: 100 symbols hold at most ~6 MB."""
_NEVER = -(2**63)


class Quote(msgspec.Struct, frozen=True, gc=False):
    """A change of one symbol's best bid/ask (the `quotes` table)."""

    exchange: str
    symbol: str
    ts: int
    bid: Decimal | None
    bid_size: Decimal | None
    ask: Decimal | None
    ask_size: Decimal | None


class _Merged:
    """One symbol's merged fields (in the order of their field names), the time each was last set, the
    newest of those times, and the newest record's times."""

    __slots__ = ("bucket", "changed_ts", "dirty", "newest", "recv_ts", "stamps", "ts", "values")

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.values: list[Any] = [None] * len(fields)
        self.stamps: list[int] = [_NEVER] * len(fields)
        self.newest = _NEVER
        """The newest stamp of any field: a record at least this new finds no field too old."""
        self.ts = 0
        self.recv_ts = 0
        self.changed_ts = 0
        self.bucket = _NEVER
        self.dirty = False


_TICKER_VALUES = operator.attrgetter(*TICKER_FIELDS)
_DERIVATIVES_VALUES = operator.attrgetter(*DERIVATIVES_FIELDS)
_QUOTE_FIELDS = 4
"""`bid`, `bid_size`, `ask`, `ask_size`: the first four of `TICKER_FIELDS`."""


def merge(
    state: _Merged, record: Ticker | DerivativesTick, values_of: Callable[[Any], Any]
) -> tuple[int, int]:
    """Merge a partial record into `state`: (the position of the first field whose value changed, -1 for
    none; how many fields were too old). `values_of` gives the record's values in the state's field order.

    A value "changes" when it differs as text too, so `"1.0"` -> `"1.00"` is kept as received; the same
    object (a price shared with the book) is unchanged without a look at its text."""
    first = -1
    stale = 0
    ts = record.ts
    values = state.values
    stamps = state.stamps
    snapshot = record.snapshot
    if ts >= state.newest:  # the usual case, ticks in order: no field can be too old
        state.newest = ts
        for i, value in enumerate(values_of(record)):
            if value is None and not snapshot:
                continue
            stamps[i] = ts
            old = values[i]
            if old is value:
                continue
            if old != value or str(old) != str(value):
                values[i] = value
                if first < 0:
                    first = i
    else:
        for i, value in enumerate(values_of(record)):
            if value is None and not snapshot:
                continue
            if ts < stamps[i]:
                stale += 1
                continue
            stamps[i] = ts
            old = values[i]
            if old is value:
                continue
            if old != value or str(old) != str(value):
                values[i] = value
                if first < 0:
                    first = i
    if ts > state.ts:
        state.ts = ts
    if record.recv_ts > state.recv_ts:
        state.recv_ts = record.recv_ts
    return first, stale


def take(state: _Merged, record: Ticker | DerivativesTick, values_of: Callable[[Any], Any]) -> int:
    """`merge` where no one asks what changed (tickers without `store_quotes`): every field the record
    carries takes its value unless it is too old. The state ends the same: a value equal to the held one
    replaces it, so its text is the newest too. How many fields were too old."""
    ts = record.ts
    values = state.values
    stamps = state.stamps
    snapshot = record.snapshot
    stale = 0
    if ts >= state.newest:
        state.newest = ts
        for i, value in enumerate(values_of(record)):
            if value is not None or snapshot:
                values[i] = value
                stamps[i] = ts
    else:
        for i, value in enumerate(values_of(record)):
            if value is not None or snapshot:
                if ts < stamps[i]:
                    stale += 1
                else:
                    values[i] = value
                    stamps[i] = ts
    if ts > state.ts:
        state.ts = ts
    if record.recv_ts > state.recv_ts:
        state.recv_ts = record.recv_ts
    return stale


@attrs.frozen
class MarketDataStatistics:
    symbols: int
    tickers: int
    derivatives: int
    liquidations: int
    duplicate_liquidations: int
    stale_fields: int
    samples: int
    quotes: int


@attrs.define
class Emitted:
    """What one `apply` produced for storage and analytics."""

    samples: list[DerivativesTick] = attrs.Factory(list)
    quotes: list[Quote] = attrs.Factory(list)
    liquidations: list[Liquidation] = attrs.Factory(list)


class LiveMarketData:
    """Latest ticker and derivatives per (exchange, symbol); outlives the actor that feeds it."""

    def __init__(self, sample_interval_s: float = 1.0, *, store_quotes: bool = False) -> None:
        if sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be > 0, got {sample_interval_s}")
        self.interval_us = max(1, round(sample_interval_s * 1_000_000))
        self.store_quotes = store_quotes
        self._tickers: dict[Key, _Merged] = {}
        self._derivatives: dict[Key, _Merged] = {}
        self._samples: dict[Key, collections.deque[DerivativesTick]] = {}
        self._liquidations: dict[Key, collections.deque[Liquidation]] = {}
        self._liquidation_ids: dict[Key, set[str]] = {}
        self._counts = collections.Counter[str]()
        # The counts of every record, kept apart from `_counts` (one attribute add each, not a Counter's).
        self._ticker_count = 0
        self._derivatives_count = 0
        self._stale_fields = 0

    # -- input -------------------------------------------------------------------------------------------

    def apply(self, records: Iterable[MarketData]) -> Emitted:
        out = Emitted()
        for record in records:
            if isinstance(record, Ticker):
                self._ticker(record, out)
            elif isinstance(record, DerivativesTick):
                self._derivative(record, out)
            else:
                self._liquidation(record, out)
        return out

    def _ticker(self, record: Ticker, out: Emitted) -> None:
        self._ticker_count += 1
        key = (record.exchange, record.symbol)
        state = self._tickers.get(key)
        if state is None:
            state = self._tickers[key] = _Merged(TICKER_FIELDS)
        if not self.store_quotes:
            stale = take(state, record, _TICKER_VALUES)
            if stale:
                self._stale_fields += stale
            return
        first, stale = merge(state, record, _TICKER_VALUES)
        if stale:
            self._stale_fields += stale
        # A field among the best bid/ask changed (as a value or as text): the quote changed.
        if 0 <= first < _QUOTE_FIELDS:
            self._counts["quotes"] += 1
            out.quotes.append(Quote(record.exchange, record.symbol, record.ts, *state.values[:_QUOTE_FIELDS]))

    def _derivative(self, record: DerivativesTick, out: Emitted) -> None:
        self._derivatives_count += 1
        key = (record.exchange, record.symbol)
        state = self._derivatives.get(key)
        if state is None:
            state = self._derivatives[key] = _Merged(DERIVATIVES_FIELDS)
        bucket = record.ts // self.interval_us
        if state.dirty and bucket > state.bucket:
            self._sample(key, state, out.samples)
        first, stale = merge(state, record, _DERIVATIVES_VALUES)
        if stale:
            self._stale_fields += stale
        if first >= 0:
            state.dirty = True
            state.changed_ts = max(state.changed_ts, record.ts)
            state.bucket = max(state.bucket, bucket)

    def _sample(self, key: Key, state: _Merged, into: list[DerivativesTick]) -> None:
        row = DerivativesTick(
            key[0],
            key[1],
            state.changed_ts,
            state.recv_ts,
            **dict(zip(DERIVATIVES_FIELDS, state.values, strict=True)),
            snapshot=True,
        )
        state.dirty = False
        self._counts["samples"] += 1
        recent = self._samples.get(key)
        if recent is None:
            recent = self._samples[key] = collections.deque(maxlen=RECENT_SAMPLES)
        if recent and recent[-1].ts == row.ts:
            recent.pop()  # a late field of an emitted instant: the newer row replaces it (stored by ts)
        recent.append(row)
        into.append(row)

    def _liquidation(self, record: Liquidation, out: Emitted) -> None:
        key = (record.exchange, record.symbol)
        seen = self._liquidation_ids.get(key)
        if seen is None:
            seen = self._liquidation_ids[key] = set()
            self._liquidations[key] = collections.deque()
        if record.id in seen:
            self._counts["duplicate_liquidations"] += 1
            return
        recent = self._liquidations[key]
        if len(recent) >= RECENT_LIQUIDATIONS:
            seen.discard(recent.popleft().id)
        recent.append(record)
        seen.add(record.id)
        self._counts["liquidations"] += 1
        out.liquidations.append(record)

    # -- input from another daemon (the serve role over NATS) -------------------------------------------

    def mirror_ticker(self, state: Ticker) -> None:
        """Take a collector's merged ticker state (a snapshot): the newest by `ts` wins, field by field,
        so a state from a lagging redundant collector never rolls a field back."""
        self._ticker(state, Emitted())

    def mirror_derivatives(self, state: DerivativesTick, samples: Iterable[DerivativesTick]) -> None:
        """Take a collector's merged derivatives state and the samples it made (the collector samples:
        it saw every record). A sample of an instant already held replaces it (as storage upserts)."""
        self._derivatives_count += 1
        key = (state.exchange, state.symbol)
        merged = self._derivatives.get(key)
        if merged is None:
            merged = self._derivatives[key] = _Merged(DERIVATIVES_FIELDS)
        _, stale = merge(merged, state, _DERIVATIVES_VALUES)
        self._stale_fields += stale
        for row in samples:
            recent = self._samples.get(key)
            if recent is None:
                recent = self._samples[key] = collections.deque(maxlen=RECENT_SAMPLES)
            if not recent or row.ts > recent[-1].ts:
                recent.append(row)
            else:  # an instant held already, or an older one (from the other collector of a hot pair)
                rows = {r.ts: r for r in recent}
                rows[row.ts] = row
                recent.clear()
                recent.extend(sorted(rows.values(), key=lambda r: r.ts)[-RECENT_SAMPLES:])
            self._counts["samples"] += 1

    def mirror_liquidations(self, records: Iterable[Liquidation]) -> None:
        """Take liquidations a collector published: each identity once, as from a feed."""
        out = Emitted()
        for record in records:
            self._liquidation(record, out)

    def close_buckets(self, now_us: int) -> list[DerivativesTick]:
        """Samples of buckets the clock has left (a quiet symbol's last change is not held back)."""
        current = now_us // self.interval_us
        rows: list[DerivativesTick] = []
        for key, state in self._derivatives.items():
            if state.dirty and state.bucket < current:
                self._sample(key, state, rows)
        return rows

    def flush(self) -> list[DerivativesTick]:
        """Every pending sample (at stop)."""
        rows: list[DerivativesTick] = []
        for key, state in self._derivatives.items():
            if state.dirty:
                self._sample(key, state, rows)
        return rows

    # -- reading -----------------------------------------------------------------------------------------

    def ticker(self, exchange: str, symbol: str) -> tuple[Ticker | None, DerivativesTick | None]:
        """The merged ticker and derivatives of a symbol (None: nothing received yet)."""
        key = (exchange, symbol)
        t = self._tickers.get(key)
        d = self._derivatives.get(key)
        ticker = (
            None
            if t is None
            else Ticker(
                exchange,
                symbol,
                t.ts,
                t.recv_ts,
                **dict(zip(TICKER_FIELDS, t.values, strict=True)),
                snapshot=True,
            )
        )
        derivs = (
            None
            if d is None
            else DerivativesTick(
                exchange,
                symbol,
                d.ts,
                d.recv_ts,
                **dict(zip(DERIVATIVES_FIELDS, d.values, strict=True)),
                snapshot=True,
            )
        )
        return ticker, derivs

    def keys(self) -> set[Key]:
        """Every (exchange, symbol) with a ticker or derivatives state."""
        return self._tickers.keys() | self._derivatives.keys()

    def recent_samples(self, exchange: str, symbol: str) -> list[DerivativesTick]:
        return list(self._samples.get((exchange, symbol), ()))

    def recent_liquidations(self, exchange: str, symbol: str) -> list[Liquidation]:
        return list(self._liquidations.get((exchange, symbol), ()))

    def statistics(self) -> MarketDataStatistics:
        c = self._counts
        return MarketDataStatistics(
            len(self._tickers.keys() | self._derivatives.keys()),
            self._ticker_count,
            self._derivatives_count,
            c["liquidations"],
            c["duplicate_liquidations"],
            self._stale_fields,
            c["samples"],
            c["quotes"],
        )


Submit = Callable[[list[Any]], None]
