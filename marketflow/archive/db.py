"""Reading partitions out of the database (and deleting archived trades), for both engines.

Rows come back as tuples in the order of an :class:`~.tables.ArchiveTable`'s columns, normalized the same
way whatever the engine: times as integer µs, decimals as exact text in plain notation (SQLite keeps the
exchange's text; PostgreSQL NUMERIC keeps its scale, so `65114.20` stays `65114.20` on both), ordered by the
table's key (text keys in code-point order, as Python and DuckDB compare strings).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol

import attrs
import trio

from marketflow.archive.tables import ArchiveTable

__all__ = [
    "DAY_US",
    "Partition",
    "PostgresSource",
    "SqliteSource",
    "TableSource",
    "dec_text",
    "row_chunks",
    "source_for",
]

DAY_US: Final = 86_400_000_000
READ_CHUNK: Final = 50_000
"""Rows per page read from the database (export and archiving hold one page of Python rows at a time)."""
DELETE_CHUNK: Final = 20_000
"""Trades deleted per transaction (SQLite: the writer waits for the lock at most one chunk's time)."""

Row = tuple[Any, ...]


@attrs.frozen(order=True)
class Partition:
    """One `exchange=/symbol=/date=` partition of a table and how many database rows it holds."""

    exchange: str
    symbol: str
    day: int  # days since 1970-01-01 (UTC)
    rows: int = attrs.field(eq=False, order=False)

    @property
    def start_us(self) -> int:
        return self.day * DAY_US

    @property
    def end_us(self) -> int:
        return (self.day + 1) * DAY_US


def dec_text(value: str | Decimal) -> str:
    """A stored decimal as plain text with its own scale (`1.0E-7` → `0.00000010`)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if "E" in value or "e" in value:
        return format(Decimal(value), "f")
    return value


class TableSource(Protocol):
    engine: str

    async def partitions(
        self, table: ArchiveTable, since: int, until: int, exchange: str | None, symbol: str | None
    ) -> list[Partition]: ...

    async def rows(
        self,
        table: ArchiveTable,
        exchange: str,
        symbol: str,
        since: int,
        until: int,
        after: Row | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """The partition's rows with `since <= time < until` (and a key after `after`), in key order, at
        most `limit`."""
        ...

    async def delete_trades(self, exchange: str, symbol: str, keys: Sequence[tuple[int, str]]) -> int:
        """Delete exactly the trades with these (ts, id); returns how many went."""
        ...


def _quoted(name: str) -> str:
    return f'"{name}"'


def _keyset(keys: Sequence[str], after: Row, mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The condition "key after `after`" for a one- or two-column key, and its parameters (`mark(i)`
    spells the i-th one's placeholder)."""
    if len(keys) == 1:
        return f" AND {keys[0]} > {mark(0)}", [after[0]]
    k1, k2 = keys
    return f" AND ({k1} > {mark(0)} OR ({k1} = {mark(0)} AND {k2} > {mark(1)}))", list(after)


def _normalizer(table: ArchiveTable) -> Callable[[Row], Row]:
    decimals = [i for i, c in enumerate(table.columns) if c.kind in ("decimal", "spelled")]
    if not decimals:
        return lambda row: tuple(row)

    def normalize(row: Row) -> Row:
        out = list(row)
        for i in decimals:
            if out[i] is not None:  # a derivatives field the venue did not send
                out[i] = dec_text(out[i])
        return tuple(out)

    return normalize


class SqliteSource:
    """Reads the SQLite file with connections of its own (WAL: the writer goes on meanwhile)."""

    engine = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def partitions(
        self, table: ArchiveTable, since: int, until: int, exchange: str | None, symbol: str | None
    ) -> list[Partition]:
        return await trio.to_thread.run_sync(self._partitions, table, since, until, exchange, symbol)

    def _partitions(
        self, table: ArchiveTable, since: int, until: int, exchange: str | None, symbol: str | None
    ) -> list[Partition]:
        t = _quoted(table.time_column)
        where = [f"{t} >= ?", f"{t} < ?"]
        params: list[Any] = [since, until]
        for column, value in (("exchange", exchange), ("symbol", symbol)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (
            f"SELECT exchange, symbol, {t} / {DAY_US}, count(*) FROM {table.name} "
            f"WHERE {' AND '.join(where)} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        conn = self._connect()
        try:
            return [Partition(*r) for r in conn.execute(sql, params)]
        finally:
            conn.close()

    async def rows(
        self,
        table: ArchiveTable,
        exchange: str,
        symbol: str,
        since: int,
        until: int,
        after: Row | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        return await trio.to_thread.run_sync(self._rows, table, exchange, symbol, since, until, after, limit)

    def _rows(
        self,
        table: ArchiveTable,
        exchange: str,
        symbol: str,
        since: int,
        until: int,
        after: Row | None,
        limit: int | None,
    ) -> list[Row]:
        t = _quoted(table.time_column)
        params: list[Any] = [exchange, symbol, since, until]
        keyset = ""
        if after is not None:
            # numbered: the first key value is used twice (the LIMIT's plain `?` numbers on after them)
            keyset, more = _keyset(list(map(_quoted, table.key)), after, lambda i: f"?{5 + i}")
            params += more
        tail = ""
        if limit is not None:
            tail = " LIMIT ?"
            params.append(limit)
        sql = (
            f"SELECT {', '.join(map(_quoted, table.column_names))} FROM {table.name} "
            f"WHERE exchange = ? AND symbol = ? AND {t} >= ? AND {t} < ?{keyset} "
            f"ORDER BY {', '.join(map(_quoted, table.key))}{tail}"
        )
        normalize = _normalizer(table)
        conn = self._connect()
        try:
            return [normalize(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()

    async def delete_trades(self, exchange: str, symbol: str, keys: Sequence[tuple[int, str]]) -> int:
        return await trio.to_thread.run_sync(self._delete, exchange, symbol, keys)

    def _delete(self, exchange: str, symbol: str, keys: Sequence[tuple[int, str]]) -> int:
        sql = "DELETE FROM trades WHERE exchange = ? AND symbol = ? AND ts = ? AND id = ?"
        conn = self._connect()
        deleted = 0
        try:
            for start in range(0, len(keys), DELETE_CHUNK):
                chunk = [(exchange, symbol, ts, id_) for ts, id_ in keys[start : start + DELETE_CHUNK]]
                before = conn.total_changes
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(sql, chunk)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                deleted += conn.total_changes - before
        finally:
            conn.close()
        return deleted


Fetch = Callable[[str, list[Any]], Awaitable[list[Any]]]


class PostgresSource:
    """Reads through the store's pool (`PostgresTradeStore.fetch`: timestamptz as integer µs)."""

    engine = "postgresql"

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch

    async def partitions(
        self, table: ArchiveTable, since: int, until: int, exchange: str | None, symbol: str | None
    ) -> list[Partition]:
        t = _quoted(table.time_column)
        params: list[Any] = [since, until]
        where = [f"{t} >= $1", f"{t} < $2"]
        for column, value in (("exchange", exchange), ("symbol", symbol)):
            if value is not None:
                params.append(value)
                where.append(f"{column} = ${len(params)}")
        sql = (
            f"SELECT exchange, symbol, floor(extract(epoch FROM {t}) / 86400)::bigint, count(*) "
            f"FROM {table.name} WHERE {' AND '.join(where)} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        return [Partition(r[0], r[1], int(r[2]), int(r[3])) for r in await self._fetch(sql, params)]

    async def rows(
        self,
        table: ArchiveTable,
        exchange: str,
        symbol: str,
        since: int,
        until: int,
        after: Row | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        t = _quoted(table.time_column)
        kinds = {c.name: c.kind for c in table.columns}
        keys = [_quoted(k) + (' COLLATE "C"' if kinds[k] == "text" else "") for k in table.key]
        params: list[Any] = [exchange, symbol, since, until]
        keyset = ""
        if after is not None:
            keyset, more = _keyset(keys, after, lambda i: f"${5 + i}")
            params += more
        tail = ""
        if limit is not None:
            params.append(limit)
            tail = f" LIMIT ${len(params)}"
        sql = (
            f"SELECT {', '.join(map(_quoted, table.column_names))} FROM {table.name} "
            f"WHERE exchange = $1 AND symbol = $2 AND {t} >= $3 AND {t} < $4{keyset} "
            f"ORDER BY {', '.join(keys)}{tail}"
        )
        normalize = _normalizer(table)
        return [normalize(tuple(r)) for r in await self._fetch(sql, params)]

    async def delete_trades(self, exchange: str, symbol: str, keys: Sequence[tuple[int, str]]) -> int:
        # One statement per chunk, so one transaction each: exactly these identities, whatever else arrived
        # meanwhile (every key here is verified in the file already, so a kill between chunks is safe).
        sql = (
            "WITH gone AS (DELETE FROM trades WHERE exchange = $1 AND symbol = $2 AND (ts, id) IN "
            "(SELECT * FROM unnest($3::timestamptz[], $4::varchar[])) RETURNING 1) SELECT count(*) FROM gone"
        )
        deleted = 0
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = keys[start : start + DELETE_CHUNK]
            rows = await self._fetch(sql, [exchange, symbol, [k[0] for k in chunk], [k[1] for k in chunk]])
            deleted += int(rows[0][0])
        return deleted


async def row_chunks(
    source: TableSource,
    table: ArchiveTable,
    exchange: str,
    symbol: str,
    since: int,
    until: int,
    size: int | None = None,
) -> AsyncIterator[list[Row]]:
    """The partition's rows in key order, `size` (default :data:`READ_CHUNK`) at a time (keyset pages:
    memory holds one page of Python rows)."""
    size = size or READ_CHUNK
    positions = [table.column_names.index(k) for k in table.key]
    after: Row | None = None
    while True:
        rows = await source.rows(table, exchange, symbol, since, until, after, size)
        if len(rows) < size:
            if rows:
                yield rows
            return
        after = tuple(rows[-1][i] for i in positions)
        if not table.unique_key:
            # The key is the time alone and does not identify a row: the page may have cut the rows of
            # its last instant short, so that instant is read again, whole (its own time range).
            ts = after[0]
            rows = [r for r in rows if r[positions[0]] != ts]
            rows += await source.rows(table, exchange, symbol, ts, ts + 1)
        yield rows


def source_for(store: object) -> TableSource:
    """The source for a trade store (`SqliteTradeStore` or `PostgresTradeStore`)."""
    path = getattr(store, "path", None)
    if getattr(store, "engine_name", None) == "sqlite" and isinstance(path, str):
        return SqliteSource(path)
    fetch = getattr(store, "fetch", None)
    if fetch is not None:
        return PostgresSource(fetch)
    raise TypeError(f"the {getattr(store, 'engine_name', '?')} store cannot be archived")
