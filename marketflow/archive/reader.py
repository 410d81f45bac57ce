"""Reading archived trades back for queries: the archive's files (DuckDB) and the database, as one store.

:class:`ArchivedReads` offers what the query layer reads from a store — `query_trades` (newest first) and
the trade scan of `analytics/stored.py` (`scan_trades`, `first_trade`, `trade_ids`) — over both: a day
with a partition file is read from the file *and* the database (normally empty for that day; it holds a
late trade until the next archiving run, or the day's rows for the moment between a file's rename and the
delete), merged one row per (ts, id); other days come from the database alone. Decimals come back in the
exchange's spelling (`files.select_list`), so `"65114.20"` stays `"65114.20"`.

The query layer uses it only for ranges that touch an archived day (:func:`reads_for`); others keep the
database's own path (PostgreSQL's SQL aggregates).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import trio

from marketflow.archive import files
from marketflow.archive.db import DAY_US, dec_text
from marketflow.archive.tables import TABLES, ArchiveError
from marketflow.model import Trade

__all__ = ["ArchivedReads", "TradeArchive", "reads_for"]

TRADES = TABLES["trades"]
CHUNK: Final = 5000
_FAR: Final = 1 << 62
ScanRow = tuple[int, str, str, str, str]


class TradeArchive:
    """The archive's trade files under `root` (`trades/exchange=/symbol=/date=/data.parquet`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def days(self, exchange: str, symbol: str, since: int | None, until: int | None) -> list[int]:
        """Days (since 1970-01-01) with a file that overlap `[since, until)`, ascending."""
        base = self.root / TRADES.name / f"exchange={exchange}" / f"symbol={symbol}"
        try:
            names = [p.name for p in base.iterdir()]
        except OSError:  # no archive (yet) for this market
            return []
        low = -_FAR if since is None else since
        high = _FAR if until is None else until
        out = []
        for name in names:
            if not name.startswith("date="):
                continue
            try:
                day = (date.fromisoformat(name[5:]) - date(1970, 1, 1)).days
            except ValueError:
                continue
            if day * DAY_US < high and (day + 1) * DAY_US > low and (base / name / "data.parquet").exists():
                out.append(day)
        return sorted(out)

    def partitions(
        self, since: int, until: int, exchange: str | None, symbol: str | None
    ) -> list[tuple[str, str, int]]:
        """(exchange, symbol, day) of every file overlapping `[since, until)`, optionally of one market."""
        out: list[tuple[str, str, int]] = []
        base = self.root / TRADES.name
        for ex_dir in sorted(base.glob("exchange=*")):
            ex = ex_dir.name.removeprefix("exchange=")
            if exchange is not None and ex != exchange:
                continue
            for sym_dir in sorted(ex_dir.glob("symbol=*")):
                sym = sym_dir.name.removeprefix("symbol=")
                if symbol is None or sym == symbol:
                    out.extend((ex, sym, day) for day in self.days(ex, sym, since, until))
        return out

    def rows(self, exchange: str, symbol: str, day: int, since: int, until: int) -> list[tuple[Any, ...]]:
        """The day's archived trades in `[since, until)` in the database's row form (`db.py`), key order."""
        where = "epoch_us(ts) >= ? AND epoch_us(ts) < ?"
        return files.read_rows(TRADES, [self.file(exchange, symbol, day)], where, [since, until])

    def file(self, exchange: str, symbol: str, day: int) -> Path:
        return files.partition_file(self.root, TRADES.name, exchange, symbol, day, "parquet")

    def _sql(self, columns: str, newest_first: bool) -> str:
        """Rows of the listed files in `[since, until)`: newest first (sorted, limited), or ascending in
        file order — the files hold (ts, id) order and DuckDB keeps it (insertion order, the default), so
        a scan of many days streams instead of sorting them all first (`chunks` checks the order)."""
        return (
            f"SELECT {columns} FROM read_parquet(?, union_by_name = true) "
            "WHERE ts >= make_timestamp(?::BIGINT)::TIMESTAMPTZ "
            "AND ts < make_timestamp(?::BIGINT)::TIMESTAMPTZ"
            + (" ORDER BY ts DESC, id DESC LIMIT ?" if newest_first else "")
        )

    def newest(
        self,
        exchange: str,
        symbol: str,
        days: Sequence[int],
        since: int | None,
        until: int | None,
        limit: int,
    ) -> list[Trade]:
        """The newest `limit` archived trades of these days in `[since, until)` (blocking)."""
        paths = [str(self.file(exchange, symbol, d)) for d in days]
        if not paths:
            return []
        con = files.duck()
        try:
            rows = con.execute(
                self._sql(f"id, {files.select_list(TRADES)}", True),
                [paths, -_FAR if since is None else since, _FAR if until is None else until, limit],
            ).fetchall()
        finally:
            con.close()
        return [Trade(exchange, symbol, r[0], Decimal(r[3]), Decimal(r[4]), r[5], r[1], r[6]) for r in rows]

    def chunks(
        self, exchange: str, symbol: str, days: Sequence[int], since: int, until: int
    ) -> Iterator[list[ScanRow]]:
        """The days' archived trades in `[since, until)` as scan rows, in (ts, id) order, in chunks."""
        ts, id_, price, amount, side, _recv = files.select_columns(TRADES)
        con = files.duck()
        try:
            # Arrow batches, then a list per column: about twice as fast as DuckDB's own fetchmany rows.
            batches = con.sql(
                self._sql(f"{ts}, {id_}, {price}, {amount}, {side}", False),
                params=[[str(self.file(exchange, symbol, day)) for day in days], since, until],
            ).to_arrow_reader(CHUNK)
            last = (-_FAR, "")
            for batch in batches:
                rows: list[ScanRow] = list(
                    zip(*(column.to_pylist() for column in batch.columns), strict=True)
                )
                if rows and not (last <= (rows[0][0], rows[0][1]) and _ascending(batch, rows)):
                    raise ArchiveError(
                        f"archived trades of {exchange} {symbol} on {', '.join(map(files.day_of, days))} are "
                        "not in (ts, id) order: a file there was not written by marketflow"
                    )
                last = (rows[-1][0], rows[-1][1]) if rows else last
                yield rows
        finally:
            con.close()


def _merged(archived: Iterator[list[ScanRow]], stored: list[ScanRow]) -> Iterator[list[ScanRow]]:
    """Two (ts, id)-ordered streams as one, one row per (ts, id), in chunks."""
    if not stored:
        yield from archived
        return
    rows = heapq.merge((r for chunk in archived for r in chunk), stored, key=lambda r: (r[0], r[1]))
    out: list[ScanRow] = []
    last: tuple[int, str] | None = None
    for row in rows:
        key = (row[0], row[1])
        if key == last:
            continue
        last = key
        out.append(row)
        if len(out) >= CHUNK:
            yield out
            out = []
    if out:
        yield out


class ArchivedReads:
    """A store's reads with the archive's days added (see the module docstring)."""

    def __init__(self, store: Any, archive: TradeArchive) -> None:
        self._store = store
        self.archive = archive
        self.engine_name = f"{store.engine_name}+archive"

    async def query_trades(
        self,
        exchange: str | None = None,
        symbol: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Trade]:
        """Newest first (by ts, then id), like the stores' `query_trades`."""
        stored: list[Trade] = await self._store.query_trades(exchange, symbol, since, until, limit)
        if exchange is None or symbol is None:
            return stored
        days = self.archive.days(exchange, symbol, since, until)
        if not days:
            return stored
        wanted = limit or _FAR
        merged = {(t.ts, t.id): t for t in stored}
        # Newest day first, and only while a day could still hold one of the newest `limit` trades: a
        # query without `since` does not read years of files.
        for day in reversed(days):
            if len(merged) >= wanted and sorted(merged, reverse=True)[wanted - 1][0] >= (day + 1) * DAY_US:
                break
            archived = await trio.to_thread.run_sync(
                self.archive.newest, exchange, symbol, [day], since, until, wanted
            )
            for t in archived:
                merged.setdefault((t.ts, t.id), t)
        ordered = sorted(merged.values(), key=lambda t: (t.ts, t.id), reverse=True)
        return ordered if limit is None else ordered[:limit]

    async def scan_trades(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        consume: Callable[[Sequence[ScanRow]], bool],
    ) -> None:
        """Stream `[since, until)` in (ts, id) order to `consume` until it returns False: archived days
        from their files merged with the database, the days between from the database."""
        low = -_FAR if since is None else since
        high = _FAR if until is None else until
        cursor = low
        # Consecutive archived days are one DuckDB query (a query costs more than a file).
        for days in _runs(self.archive.days(exchange, symbol, since, until)):
            start, end = max(days[0] * DAY_US, low), min((days[-1] + 1) * DAY_US, high)
            if cursor < start and not await self._db_scan(exchange, symbol, cursor, start, consume):
                return
            stored: list[ScanRow] = []
            await self._db_scan(exchange, symbol, start, end, _collector(stored))
            chunks = _merged(self.archive.chunks(exchange, symbol, days, start, end), stored)
            if not await trio.to_thread.run_sync(_feed, chunks, consume, abandon_on_cancel=True):
                return
            cursor = end
        if cursor < high:
            await self._db_scan(exchange, symbol, cursor, high, consume)

    async def _db_scan(
        self, exchange: str, symbol: str, since: int, until: int, consume: Callable[[Sequence[ScanRow]], bool]
    ) -> bool:
        """The database's part; False when `consume` asked to stop."""
        stopped = threading.Event()

        def wrapped(rows: Sequence[ScanRow]) -> bool:
            if consume(rows):
                return True
            stopped.set()
            return False

        scan = getattr(self._store, "scan_trades", None)
        if scan is not None:
            await scan(exchange, symbol, since, until, wrapped)
            return not stopped.is_set()
        # PostgreSQL: keyset pages in (ts, id) order (code-point order of ids, as Python compares them).
        after: tuple[int, str] | None = None
        while True:
            params: list[Any] = [exchange, symbol, since, until, CHUNK]
            keyset = ""
            if after is not None:
                params += list(after)
                keyset = ' AND (ts > $6 OR (ts = $6 AND id COLLATE "C" > $7))'
            records = await self._store.fetch(
                "SELECT ts, id, price, amount, side FROM trades WHERE exchange = $1 AND symbol = $2 "
                f'AND ts >= $3 AND ts < $4{keyset} ORDER BY ts, id COLLATE "C" LIMIT $5',
                params,
            )
            rows = [(r[0], r[1], dec_text(r[2]), dec_text(r[3]), r[4]) for r in records]
            if rows and not await trio.to_thread.run_sync(wrapped, rows):
                return False
            if len(rows) < CHUNK:
                return True
            after = (rows[-1][0], rows[-1][1])

    async def first_trade(
        self, exchange: str, symbol: str, since: int | None, until: int | None
    ) -> tuple[int, str, Decimal] | None:
        """(ts, id, price) of the first trade with an amount > 0 by (ts, id), or None."""
        found: list[tuple[int, str, Decimal]] = []

        def consume(rows: Sequence[ScanRow]) -> bool:
            for ts, id_, price, amount, _side in rows:
                if Decimal(amount) > 0:
                    found.append((ts, id_, Decimal(price)))
                    return False
            return True

        await self.scan_trades(exchange, symbol, since, until, consume)
        return found[0] if found else None

    async def trade_ids(self, exchange: str, symbol: str, since: int, until: int | None) -> set[str]:
        ids: set[str] = set()

        def consume(rows: Sequence[ScanRow]) -> bool:
            ids.update(r[1] for r in rows)
            return True

        await self.scan_trades(exchange, symbol, since, until, consume)
        return ids


def _ascending(batch: pa.RecordBatch, rows: Sequence[ScanRow]) -> bool:
    """Whether a batch's rows are in (ts, id) order: times compared in Arrow, ids only where times tie."""
    steps = pc.pairwise_diff(batch.column(0))
    if len(rows) < 2:
        return True
    if pc.min(steps).as_py() < 0:
        return False
    ties = pc.indices_nonzero(pc.equal(steps, 0)).to_pylist()
    return all(rows[i - 1][1] <= rows[i][1] for i in ties)


def _runs(days: Sequence[int]) -> list[list[int]]:
    """Ascending days in runs of consecutive ones: [1, 2, 3, 7, 8] → [[1, 2, 3], [7, 8]]."""
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _feed(chunks: Iterator[list[ScanRow]], consume: Callable[[Sequence[ScanRow]], bool]) -> bool:
    return all(consume(chunk) for chunk in chunks)


def _collector(into: list[ScanRow]) -> Callable[[Sequence[ScanRow]], bool]:
    def keep(rows: Sequence[ScanRow]) -> bool:
        into.extend(rows)
        return True

    return keep


def reads_for(
    store: object,
    archive: TradeArchive | None,
    exchange: str,
    symbol: str,
    since: int | None,
    until: int | None,
) -> object:
    """What the query layer should read `[since, until)` of a market from: the store itself unless the
    range touches an archived day."""
    if archive is None or not archive.days(exchange, symbol, since, until):
        return store
    return ArchivedReads(store, archive)
