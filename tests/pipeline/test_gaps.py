"""The gap ledger keeps recent records for reads and saves every change, retrying failed saves."""

from __future__ import annotations

import trio

from marketflow.model import GapRecord
from marketflow.pipeline.gaps import GapLedger


async def test_open_close_query_and_persist_with_retry(autojump_clock: trio.abc.Clock) -> None:
    saved: list[list[GapRecord]] = []
    fail = [True]

    async def persist(records: list[GapRecord]) -> None:
        if fail[0]:
            fail[0] = False
            raise OSError("database is down")
        saved.append(records)

    ledger = GapLedger(persist, flush_interval_s=1.0, keep=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.sink().run)
        gap = ledger.open("binance", "BTC-USDT", "trades", "aggregate trade ids 5..9 missing", start=100)
        ledger.open("bybit", "ETH-USDT", "book", "update id jumped from 7 to 9", start=200)
        closed = ledger.close(gap, recovered=5, end=150)
        assert closed == GapRecord(
            "binance", "BTC-USDT", "trades", 100, 150, "aggregate trade ids 5..9 missing", 5
        )
        assert [r.symbol for r in ledger.query()] == ["BTC-USDT", "ETH-USDT"]  # newest change first
        assert ledger.query(exchange="bybit")[0].end is None
        await trio.sleep(1.5)  # first save fails and is retried
        assert saved == [] and ledger.statistics().errors == 1
        await trio.sleep(2)
        assert {(r.symbol, r.end) for r in saved[0]} == {("BTC-USDT", 150), ("ETH-USDT", None)}
        for i in range(5):
            ledger.open("bybit", f"S{i}-USDT", "book", "x", start=300 + i)
        assert len(ledger.query()) == 3  # bounded in memory
        nursery.cancel_scope.cancel()
    # Cancelling flushed what was still unsaved.
    assert sum(len(batch) for batch in saved) == 7
