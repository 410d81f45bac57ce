"""SQLite storage, the embedded default: WAL, one writer thread, idempotent batched inserts.

The schema is `schema.py`, created and versioned by the migrations (`migrate.prepare` initialises an empty
file and refuses any other revision but the newest); the insert statement is compiled from the same table
once and run with the stdlib driver's `executemany` — SQLAlchemy's own executemany measured ~18% slower
here for the same work. Writes and retention pruning share the one writer connection and take turns
(a FIFO limiter of one), so a prune batch delays a write by at most its own length.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import trio
from sqlalchemy.dialects import sqlite as sqlite_dialect

from marketflow.model import DerivativesTick, GapRecord, Liquidation, Trade
from marketflow.storage import aggregates, market_rows, migrate, records
from marketflow.storage.schema import trades
from marketflow.storage.store import StorageError

__all__ = ["SqliteTradeStore", "StorageError", "sqlite_path"]

T = TypeVar("T")


def sqlite_path(url: str) -> str:
    """`sqlite:///./var/x.db` → `./var/x.db`; `sqlite:///:memory:` → `:memory:`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise StorageError(f"not a SQLite URL: {url!r} (expected sqlite:///PATH)")
    return url[len(prefix) :]


def _compile_insert() -> str:
    stmt = sqlite_dialect.insert(trades).on_conflict_do_nothing()
    return str(stmt.compile(dialect=sqlite_dialect.dialect(paramstyle="qmark")))


_INSERT_TRADES = _compile_insert()
ROWS_PER_INSERT = 100
"""Trades per INSERT statement: one multi-row VALUES statement per 100 trades costs ~2.4 µs a row against
~3.6 for `executemany` of one row at a time, which also hands the GIL back and forth around every row."""


def _multi_row_insert(rows: int) -> str:
    head, values, tail = _INSERT_TRADES.partition(" VALUES ")
    one, conflict, rest = tail.partition(" ON CONFLICT DO NOTHING")
    if not (values and conflict) or rest:
        raise RuntimeError(f"unexpected SQLite insert statement: {_INSERT_TRADES}")
    return f"{head} VALUES {', '.join([one] * rows)} ON CONFLICT DO NOTHING"


_INSERT_TRADES_MANY = _multi_row_insert(ROWS_PER_INSERT)
_PRUNE = "DELETE FROM trades WHERE rowid IN (SELECT rowid FROM trades WHERE ts < ? ORDER BY ts LIMIT ?)"

READ_THREADS = 4
"""Worker threads SQLite reads may occupy at once (beyond that they queue). Reads have their own limiter so
that many slow range scans cannot take every thread of trio's default limiter, which DNS lookups, capture
writes and config reloads share."""


class SqliteTradeStore:
    """Writes and reads trades in one SQLite file. Writes run in one worker thread, one at a time; reads
    in up to `read_threads` more (:attr:`read_limiter`)."""

    engine_name = "sqlite"

    def __init__(self, url: str, *, read_threads: int = READ_THREADS) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        # Reads open their own connection each (WAL lets them run beside the writer).
        self.read_limiter = trio.CapacityLimiter(read_threads)

    @property
    def display_url(self) -> str:
        return self.url

    async def open(self) -> None:
        """Create the file, the schema and the writer connection."""
        await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)

    def _open_sync(self) -> None:
        if self._conn is not None:
            return
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        migrate.prepare(self.url)  # raises SchemaVersionError unless the schema is the newest
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._conn = conn

    async def write_trades(self, batch: Sequence[Trade]) -> int:
        """Insert a batch in one transaction; returns how many rows were new (duplicates are skipped)."""
        return await trio.to_thread.run_sync(self._write_sync, batch, limiter=self._limiter)

    def _write_sync(self, batch: Sequence[Trade]) -> int:
        conn = self._conn
        if conn is None:
            raise StorageError("SQLite store used before open()")
        values = [
            v
            for t in batch
            for v in (t.exchange, t.symbol, t.ts, t.id, str(t.price), str(t.amount), t.side, t.recv_ts)
        ]
        step = 8 * ROWS_PER_INSERT
        whole = len(values) // step * step
        try:
            before = conn.total_changes
            conn.execute("BEGIN")
            try:
                if whole:
                    statements = [values[i : i + step] for i in range(0, whole, step)]
                    conn.executemany(_INSERT_TRADES_MANY, statements)
                if whole < len(values):
                    rest = [values[i : i + 8] for i in range(whole, len(values), 8)]
                    conn.executemany(_INSERT_TRADES, rest)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite insert into {self.path} failed: {exc}") from exc

    async def write_gaps(self, batch: Sequence[GapRecord]) -> None:
        """Upsert gap ledger records (a record is replaced when it closes)."""
        await self._execute_many(records.SQLITE["gaps"], records.gap_rows(batch))

    async def write_book_snapshots(self, batch: Sequence[records.BookSnapshotRow]) -> None:
        await self._execute_many(records.SQLITE["book_snapshots"], records.book_rows(batch))

    async def write_candles(self, batch: Sequence[records.CandleRow]) -> None:
        """Upsert candles (a late trade's correction replaces the stored candle)."""
        await self._execute_many(records.SQLITE["candles"], records.candle_rows(batch, exact_text=True))

    async def write_derivatives(self, batch: Sequence[DerivativesTick]) -> None:
        """Upsert derivatives samples by (exchange, symbol, ts)."""
        await self._execute_many(
            market_rows.SQLITE["derivatives"], market_rows.derivative_rows(batch, exact_text=True)
        )

    async def write_liquidations(self, batch: Sequence[Liquidation]) -> None:
        """Insert liquidations; one already stored (same identity) is skipped."""
        rows = market_rows.liquidation_rows(batch, exact_text=True)
        await self._execute_many(market_rows.SQLITE["liquidations"], rows)

    async def write_quotes(self, batch: Sequence[market_rows.QuoteRow]) -> None:
        await self._execute_many(market_rows.SQLITE["quotes"], market_rows.quote_rows(batch, exact_text=True))

    async def query_derivatives(
        self, exchange: str, symbol: str, since: int | None, until: int | None, limit: int | None
    ) -> list[DerivativesTick]:
        """Derivatives samples, newest first."""
        return await self._read(market_rows.sqlite_derivatives, exchange, symbol, since, until, limit)

    async def query_liquidations(
        self, exchange: str, symbol: str | None, since: int | None, until: int | None, limit: int | None
    ) -> list[Liquidation]:
        """Liquidations, newest first."""
        return await self._read(market_rows.sqlite_liquidations, exchange, symbol, since, until, limit)

    async def prune_market_data(self, before_us: int, limit: int) -> int:
        """Delete up to `limit` of the oldest rows with `ts < before_us` from each §12 table."""
        return await trio.to_thread.run_sync(self._prune_market_sync, before_us, limit, limiter=self._limiter)

    def _prune_market_sync(self, before_us: int, limit: int) -> int:
        conn = self._conn
        if conn is None:
            raise StorageError("SQLite store used before open()")
        try:
            return sum(
                conn.execute(market_rows.sqlite_prune(table), (before_us, limit)).rowcount
                for table in market_rows.PRUNED_TABLES
            )
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite retention delete in {self.path} failed: {exc}") from exc

    async def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            await trio.to_thread.run_sync(self._execute_many_sync, sql, rows, limiter=self._limiter)

    def _execute_many_sync(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        if conn is None:
            raise StorageError("SQLite store used before open()")
        try:
            conn.execute("BEGIN")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite write to {self.path} failed: {exc}") from exc

    async def prune_trades(self, before_us: int, limit: int) -> int:
        """Delete up to `limit` of the oldest trades with `ts < before_us`; returns how many went."""
        return await trio.to_thread.run_sync(self._prune_sync, before_us, limit, limiter=self._limiter)

    def _prune_sync(self, before_us: int, limit: int) -> int:
        conn = self._conn
        if conn is None:
            raise StorageError("SQLite store used before open()")
        try:
            cursor = conn.execute(_PRUNE, (before_us, limit))
            return cursor.rowcount
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite retention delete in {self.path} failed: {exc}") from exc

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def query_trades(
        self,
        exchange: str | None = None,
        symbol: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Trade]:
        """Trades newest first (by ts, then id), filtered; a separate read connection, so writes go on."""
        return await trio.to_thread.run_sync(
            self._query_sync,
            exchange,
            symbol,
            since,
            until,
            limit,
            limiter=self.read_limiter,
            abandon_on_cancel=True,
        )

    def _query_sync(
        self,
        exchange: str | None,
        symbol: str | None,
        since: int | None,
        until: int | None,
        limit: int | None,
    ) -> list[Trade]:
        clauses: list[str] = []
        params: list[Any] = []
        for sql, value in (
            ("exchange = ?", exchange),
            ("symbol = ?", symbol),
            ("ts >= ?", since),
            ("ts < ?", until),
        ):
            if value is not None:
                clauses.append(sql)
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        tail = " LIMIT ?" if limit is not None else ""
        if limit is not None:
            params.append(limit)
        sql = (
            "SELECT exchange, symbol, id, price, amount, side, ts, recv_ts FROM trades"
            + where
            + " ORDER BY ts DESC, id DESC"
            + tail
        )
        try:
            conn = sqlite3.connect(self.path)
            try:
                rows = conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite query on {self.path} failed: {exc}") from exc
        return [Trade(r[0], r[1], r[2], Decimal(r[3]), Decimal(r[4]), r[5], r[6], r[7]) for r in rows]

    async def scan_trades(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        consume: Callable[[Sequence[aggregates.ScanRow]], bool],
    ) -> None:
        """Stream the range's trades in (ts, id) order to `consume`, in chunks, on a worker thread (which
        `consume` runs on too) until it returns False; see `aggregates.sqlite_scan`. Cancelling stops the
        scan at the next chunk."""
        stop = threading.Event()
        try:
            await trio.to_thread.run_sync(
                aggregates.sqlite_scan,
                self.path,
                exchange,
                symbol,
                since,
                until,
                consume,
                stop,
                abandon_on_cancel=True,
                limiter=self.read_limiter,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite query on {self.path} failed: {exc}") from exc
        finally:
            stop.set()

    async def first_trade(
        self, exchange: str, symbol: str, since: int | None, until: int | None
    ) -> tuple[int, str, Decimal] | None:
        return await self._read(aggregates.sqlite_first_trade, exchange, symbol, since, until)

    async def trade_ids(self, exchange: str, symbol: str, since: int, until: int | None) -> set[str]:
        return await self._read(aggregates.sqlite_trade_ids, exchange, symbol, since, until)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            # Abandoned at a query's deadline: the read has its own connection, its result is dropped.
            return await trio.to_thread.run_sync(
                fn, self.path, *args, limiter=self.read_limiter, abandon_on_cancel=True
            )
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite query on {self.path} failed: {exc}") from exc

    async def count_trades(self) -> int:
        def count() -> int:
            conn = sqlite3.connect(self.path)
            try:
                return int(conn.execute("SELECT count(*) FROM trades").fetchone()[0])
            finally:
                conn.close()

        return await trio.to_thread.run_sync(count, limiter=self.read_limiter)
