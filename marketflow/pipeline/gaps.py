"""The gap ledger: every disconnect, book resync and trade-id gap, with what was recovered.

Records are opened and closed by whoever notices them (feeds, the book keeper, the backfiller) through
synchronous calls that never wait; the ledger keeps the recent ones in memory for the API and queues every
new or changed record for a `RecordSink` (`GapLedger.sink()`, a fresh actor per start) that saves them in
batches through `persist` (the storage engine's `write_gaps`, an upsert by identity).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs

from marketflow.model import GapRecord, now_us
from marketflow.runtime.sink import RecordQueue, RecordSink
from marketflow.runtime.spill import SpillFactory

log = logging.getLogger("marketflow.gaps")

GapKey = tuple[str, str, str, int]


@attrs.frozen
class LedgerStatistics:
    name: str
    records: int
    open: int
    unsaved: int
    persisted: int
    errors: int


class GapLedger:
    """Keeps the last `keep` gap records; its `sink()` persists changes every `flush_interval_s`."""

    def __init__(
        self,
        persist: Callable[[list[GapRecord]], Awaitable[None]] | None = None,
        *,
        keep: int = 10_000,
        flush_interval_s: float = 1.0,
        name: str = "gaps",
        spills: SpillFactory | None = None,
        capacity: int = 100_000,
    ) -> None:
        """`spills`: where records the database cannot take yet go past the queue's memory bound."""
        self.name = name
        self._keep = keep
        self._records: OrderedDict[GapKey, GapRecord] = OrderedDict()
        self._persist = persist
        self._flush_interval_s = flush_interval_s
        # Saving is the sink's: changes to one record before a save are written once, latest version.
        self._unsaved: RecordQueue[GapRecord] = RecordQueue(
            name,
            key=self.key,
            capacity=capacity,
            accept=persist is not None,
            spill=None if spills is None or persist is None else spills(name, GapRecord),
        )

    @property
    def queue(self) -> RecordQueue[GapRecord]:
        """Changed records not saved yet (for statistics)."""
        return self._unsaved

    def sink(self) -> RecordSink[GapRecord]:
        """A new actor saving the ledger's changes; what it had not saved when it ended waits for the next."""
        return RecordSink(
            self.name, self._persist, queue=self._unsaved, flush_interval_s=self._flush_interval_s
        )

    @staticmethod
    def key(record: GapRecord) -> GapKey:
        return (record.exchange, record.symbol, record.channel, record.start)

    def record(self, record: GapRecord) -> GapRecord:
        """Add or replace a record (same exchange, symbol, channel and start)."""
        key = self.key(record)
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self._keep:
            self._records.popitem(last=False)
        self._unsaved.submit([record])
        log.info(
            "gap recorded" if record.end is None else "gap closed",
            extra={
                "exchange": record.exchange,
                "symbol": record.symbol,
                "channel": record.channel,
                "reason": record.reason,
                "recovered": record.recovered,
            },
        )
        return record

    def open(
        self, exchange: str, symbol: str, channel: str, reason: str, start: int | None = None
    ) -> GapRecord:
        return self.record(GapRecord(exchange, symbol, channel, start or now_us(), None, reason))

    def close(self, record: GapRecord, *, recovered: int = 0, end: int | None = None) -> GapRecord:
        closed = GapRecord(
            record.exchange,
            record.symbol,
            record.channel,
            record.start,
            end or now_us(),
            record.reason,
            record.recovered + recovered,
        )
        return self.record(closed)

    def query(self, exchange: str | None = None, symbol: str | None = None) -> list[GapRecord]:
        """Recent records, newest first, optionally for one exchange and/or symbol."""
        return [
            r
            for r in reversed(self._records.values())
            if (exchange is None or r.exchange == exchange) and (symbol is None or r.symbol == symbol)
        ]

    def statistics(self) -> LedgerStatistics:
        open_count = sum(1 for r in self._records.values() if r.end is None)
        sink = self._unsaved.statistics()
        return LedgerStatistics(
            self.name, len(self._records), open_count, sink.queued, sink.written, sink.errors
        )
