"""SQLite trade inserts: a multi-row statement per `ROWS_PER_INSERT` trades, rows as one at a time."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from marketflow.storage import sqlite as sqlite_store
from marketflow.storage.sqlite import ROWS_PER_INSERT, SqliteTradeStore
from tests.storage.helpers import trade


async def test_a_batch_is_written_a_statement_per_hundred_trades_and_duplicates_are_skipped(
    tmp_path: Path,
) -> None:
    store = SqliteTradeStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    statements: list[str] = []
    assert store._conn is not None
    store._conn.set_trace_callback(statements.append)
    n = 2 * ROWS_PER_INSERT + 37
    batch = [trade(i, price=f"65114.{i:03d}0") for i in range(n)]
    batch[150] = batch[20]  # the same trade twice in one batch: one row
    assert await store.write_trades(batch) == n - 1
    inserts = [s for s in statements if s.startswith("INSERT")]
    # Two statements of a hundred rows, then the 37 left over one by one; not one statement per trade.
    assert len(inserts) == 2 + 37
    assert await store.write_trades([trade(5, price="65114.0050"), trade(n)]) == 1
    rows = await store.query_trades(limit=None)
    assert len(rows) == n + 1 - 1
    by_id = {t.id: t for t in rows}
    assert by_id[trade(7).id].price == Decimal("65114.0070") and str(by_id[trade(7).id].price) == "65114.0070"
    assert by_id[trade(7).id] == batch[7]
    await store.close()


def test_the_multi_row_statement_is_the_one_row_insert_repeated() -> None:
    one = sqlite_store._INSERT_TRADES
    many = sqlite_store._INSERT_TRADES_MANY
    assert many.startswith(one.partition(" VALUES ")[0] + " VALUES (?")
    assert many.count("?") == 8 * ROWS_PER_INSERT and many.endswith(" ON CONFLICT DO NOTHING")
