"""Partition files: rows → Arrow → one Parquet (or CSV) file per partition, written so a crash never leaves
a half file where a reader looks, merged with what the partition already holds, read back exactly.

Layout (hive partitioning, readable as it is by DuckDB, polars and pyarrow)::

    <root>/<table>/exchange=<exchange>/symbol=<symbol>/date=<YYYY-MM-DD>/data.parquet

A write goes to a dot-named temporary file beside the target (no reader's `*.parquet` glob matches it),
is fsynced, renamed over the target and the directory fsynced: the partition holds the old file or the
new one, never a torn one. The new file is the old one's rows merged with the new rows (same key: the new
row wins), so exporting a range twice, or archiving a day that already has a file, leaves one file with each
row once. Parquet: zstd, dictionary encoding, statistics; decimals as described in `tables.py`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from marketflow.archive.tables import DECIMAL_PRECISION, DECIMAL_SCALE, ArchiveError, ArchiveTable

__all__ = [
    "FILE_STEM",
    "Format",
    "checksum",
    "day_of",
    "partition_dir",
    "partition_file",
    "read_rows",
    "remove_temporaries",
    "to_arrow",
    "write_partition",
]

Format = Literal["parquet", "csv"]
FILE_STEM: Final = "data"
_TMP_PREFIX: Final = ".tmp-"
_EPOCH_DAY: Final = date(1970, 1, 1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TIME = pa.timestamp("us", tz="UTC")
Row = tuple[Any, ...]


_duck_lock = threading.Lock()
_duck: duckdb.DuckDBPyConnection | None = None


def duck() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection of its own for the calling thread (close it after use): a cursor of one
    in-memory database, because opening a database costs 50-100 ms here and a cursor 20 µs. Times are
    UTC in every one of them."""
    global _duck
    with _duck_lock:
        if _duck is None:
            _duck = duckdb.connect()
            _duck.execute("SET GLOBAL TimeZone = 'UTC'")
        return _duck.cursor()


def day_of(day: int) -> str:
    """Days since 1970-01-01 → `2026-08-09`."""
    return (_EPOCH_DAY + timedelta(days=day)).isoformat()


def partition_dir(root: Path, table: str, exchange: str, symbol: str, day: int) -> Path:
    return root / table / f"exchange={exchange}" / f"symbol={symbol}" / f"date={day_of(day)}"


def partition_file(root: Path, table: str, exchange: str, symbol: str, day: int, fmt: Format) -> Path:
    return partition_dir(root, table, exchange, symbol, day) / f"{FILE_STEM}.{fmt}"


def _scale(text: str) -> int:
    dot = text.find(".")
    return 0 if dot < 0 else len(text) - dot - 1


def _decimal_type(texts: Sequence[str | None], column: str) -> pa.Decimal128Type:
    """decimal128(38, 18), or a wider scale when a value has more fractional digits; an error when a
    value cannot be held exactly at all."""
    scale = DECIMAL_SCALE
    integer_digits = 1
    for text in texts:
        if text is None:
            continue
        s = _scale(text)
        scale = max(scale, s)
        whole = len(text) - (s + 1 if s else 0) - (1 if text.startswith("-") else 0)
        integer_digits = max(integer_digits, whole)
    if integer_digits + scale > DECIMAL_PRECISION:
        raise ArchiveError(
            f"column {column}: a value needs {integer_digits} integer and {scale} fractional digits, more "
            f"than decimal128({DECIMAL_PRECISION}) holds exactly"
        )
    return pa.decimal128(DECIMAL_PRECISION, scale)


def to_arrow(table: ArchiveTable, rows: Sequence[Row]) -> pa.Table:
    """Database rows (see `db.py`) → an Arrow table with the archive's types."""
    arrays: dict[str, pa.Array] = {}
    for i, column in enumerate(table.columns):
        values = [r[i] for r in rows]
        kind = column.kind
        if kind in ("time", "time?"):
            arrays[column.name] = pa.array(values, pa.int64()).cast(_TIME)
        elif kind == "int":
            arrays[column.name] = pa.array(values, pa.int64())
        elif kind == "text":
            arrays[column.name] = pa.array(values, pa.string())
        else:
            arrays[column.name] = pa.array(values, pa.string()).cast(_decimal_type(values, column.name))
            if kind == "spelled":
                scales = [None if v is None else _scale(v) for v in values]
                arrays[column.name + "_scale"] = pa.array(scales, pa.int8())
    return pa.table(arrays)


def _csv_table(table: ArchiveTable, rows: Sequence[Row]) -> pa.Table:
    """CSV: decimals as the exact text, times as ISO 8601 UTC with µs (`2026-08-09T12:00:19.680000Z`)."""
    arrays: dict[str, pa.Array] = {}
    for i, column in enumerate(table.columns):
        values = [r[i] for r in rows]
        if column.kind in ("time", "time?"):
            arrays[column.name] = pa.array(
                [None if v is None else _iso(v) for v in values],
                pa.string(),
            )
        elif column.kind == "int":
            arrays[column.name] = pa.array(values, pa.int64())
        else:
            arrays[column.name] = pa.array(values, pa.string())
    return pa.table(arrays)


def _iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def remove_temporaries(directory: Path) -> int:
    """Delete temporary files a killed write left in a partition directory; returns how many."""
    removed = 0
    if directory.is_dir():
        for leftover in directory.glob(_TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _merge(old: pa.Table, new: pa.Table, table: ArchiveTable) -> pa.Table:
    """Rows of both, one per identity (the new one wins), in key order (strings by code point)."""
    con = duck()
    try:
        con.register("old_rows", old)
        con.register("new_rows", new)
        keys = ", ".join(f'"{k}"' for k in table.key)
        identity = ", ".join(f'"{k}"' for k in table.merge_key)
        merged = _arrow(
            con.sql(
                f"SELECT * EXCLUDE (_src) FROM (SELECT *, 0 AS _src FROM new_rows UNION ALL BY NAME "
                f"SELECT *, 1 AS _src FROM old_rows) QUALIFY row_number() OVER (PARTITION BY {identity} "
                f"ORDER BY _src) = 1 ORDER BY {keys}"
            )
        )
    finally:
        con.close()
    # DuckDB names its zone ("Etc/UTC"); the archive's times are plain UTC, as in every other file.
    fields = [pa.field(f.name, _TIME) if pa.types.is_timestamp(f.type) else f for f in merged.schema]
    return merged.cast(pa.schema(fields))


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    result: Any = relation.arrow()
    return result if isinstance(result, pa.Table) else result.read_all()


def arrow_rows(table: ArchiveTable, rows: Sequence[Row], fmt: Format = "parquet") -> pa.Table:
    """Database rows as the Arrow table a file of `fmt` holds."""
    return _csv_table(table, rows) if fmt == "csv" else to_arrow(table, rows)


def concat(parts: Sequence[pa.Table]) -> pa.Table:
    """Tables of the same columns as one; a decimal column takes the largest scale of its parts (pyarrow's
    own promotion would widen to decimal256)."""
    if len(parts) == 1:
        return parts[0]
    fields = []
    for field in parts[0].schema:
        if pa.types.is_decimal(field.type):
            scale = max(p.schema.field(field.name).type.scale for p in parts)
            fields.append(pa.field(field.name, pa.decimal128(DECIMAL_PRECISION, scale)))
        else:
            fields.append(field)
    schema = pa.schema(fields)
    return pa.concat_tables([p.cast(schema) for p in parts])


def merge(old: pa.Table, new: pa.Table, table: ArchiveTable) -> pa.Table:
    """Rows of both, one per key (`new`'s wins), in key order."""
    return _merge(old, new, table)


def write_partition(
    table: ArchiveTable,
    rows: Sequence[Row] | pa.Table,
    target: Path,
    fmt: Format = "parquet",
    before_rename: Callable[[], None] | None = None,
) -> tuple[pa.Table, int]:
    """Write `rows` (database rows, or an :func:`arrow_rows` table) into the partition file `target`,
    merged with the rows it already holds; returns the table written and the file's size in bytes.
    Atomic and durable (see the module docstring)."""
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    remove_temporaries(directory)
    new = rows if isinstance(rows, pa.Table) else arrow_rows(table, rows, fmt)
    if target.exists():
        if fmt == "csv":
            old = pa_csv.read_csv(target, convert_options=_csv_options(table))
        else:
            old = pq.read_table(target)
        new = _merge(old, new, table)
    tmp = directory / f"{_TMP_PREFIX}{os.getpid()}-{target.name}"
    try:
        if fmt == "csv":
            pa_csv.write_csv(new, tmp)
        else:
            encodings = _encodings(table)
            dictionary = [name for name in new.column_names if name not in encodings]
            pq.write_table(
                new,
                tmp,
                compression="zstd",
                compression_level=6,
                use_dictionary=dictionary,
                column_encoding=encodings,
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return new, target.stat().st_size


def _encodings(table: ArchiveTable) -> dict[str, str]:
    """Times (increasing within a file) as deltas, key strings (trade ids) by shared prefix; the other
    columns dictionary-encoded (sides, scales, prices repeat). Measured on BTC-like trades: 23 → 14 bytes
    per trade; every reader named in the README decodes these encodings."""
    encodings = {}
    for column in table.columns:
        if column.kind in ("time", "time?"):
            encodings[column.name] = "DELTA_BINARY_PACKED"
        elif column.kind == "text" and column.name in table.key and column.name != table.key[0]:
            encodings[column.name] = "DELTA_BYTE_ARRAY"
    return encodings


def _csv_options(table: ArchiveTable) -> pa_csv.ConvertOptions:
    types = {c.name: (pa.int64() if c.kind == "int" else pa.string()) for c in table.columns}
    return pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)


# -- reading back -----------------------------------------------------------------------------------------


def _spelled_sql(name: str, alias: str = "") -> str:
    """The exact text of a ``spelled`` decimal: its DECIMAL as text (always with a point: the scale is at
    least 18), cut to the written number of fractional digits (and no point for none)."""
    v = f'CAST({alias}"{name}" AS VARCHAR)'
    s = f'{alias}"{name}_scale"'
    return f"left({v}, strpos({v}, '.') + {s} - ({s} = 0)::INTEGER)"


def select_list(table: ArchiveTable, alias: str = "") -> str:
    """DuckDB select list giving rows in the database form of `db.py` (µs ints, decimal text)."""
    return ", ".join(select_columns(table, alias))


def select_columns(table: ArchiveTable, alias: str = "") -> list[str]:
    """The expressions of :func:`select_list`, one per column."""
    parts = []
    for c in table.columns:
        if c.kind in ("time", "time?"):
            parts.append(f'epoch_us({alias}"{c.name}")')
        elif c.kind == "spelled":
            parts.append(_spelled_sql(c.name, alias))
        elif c.kind == "decimal":
            parts.append(f'CAST({alias}"{c.name}" AS VARCHAR)')
        else:
            parts.append(f'{alias}"{c.name}"')
    return parts


def read_rows(
    table: ArchiveTable, files: Iterable[Path], where: str = "", params: Sequence[Any] = ()
) -> list[Row]:
    """Rows of Parquet partition files in the database form, in key order (DuckDB)."""
    paths = [str(f) for f in files]
    if not paths:
        return []
    order = ", ".join(f'"{k}"' for k in table.key)
    sql = (
        f"SELECT {select_list(table)} FROM read_parquet(?, union_by_name = true) "
        f"{'WHERE ' + where if where else ''} ORDER BY {order}"
    )
    con = duck()
    try:
        rows = con.execute(sql, [paths, *params]).fetchall()
    finally:
        con.close()
    if table.name != "trades":  # decimals of unspelled columns: plain text of the value
        decimals = [i for i, c in enumerate(table.columns) if c.kind == "decimal"]
        rows = [_plain(r, decimals) for r in rows]
    return rows


def _plain(row: Row, decimals: Sequence[int]) -> Row:
    out = list(row)
    for i in decimals:
        if out[i] is not None:
            out[i] = format(Decimal(out[i]).normalize(), "f")
    return tuple(out)


def matching_checksum(
    table: ArchiveTable, target: Path, exchange: str, symbol: str, keys: pa.Table
) -> tuple[int, str]:
    """Count and :func:`checksum` of the rows of the file `target` whose key is in `keys` (an Arrow table
    of the key columns, times as µs), read back from the file in key order, streamed."""
    order = ", ".join(f'f."{k}"' for k in table.key)
    on = " AND ".join(
        f'epoch_us(f."{k}") = k."{k}"' if k == table.time_column else f'f."{k}" = k."{k}"' for k in table.key
    )
    con = duck()
    count = 0
    digest = hashlib.sha256()
    prefix = f"{exchange}\t{symbol}\t"
    try:
        con.register("wanted", keys)
        cursor = con.execute(
            f"SELECT {select_list(table, 'f.')} FROM read_parquet(?) f SEMI JOIN wanted k ON {on} "
            f"ORDER BY {order}",
            [str(target)],
        )
        while rows := cursor.fetchmany(50_000):
            count += len(rows)
            for row in rows:
                digest.update((prefix + "\t".join(map(str, row)) + "\n").encode())
    finally:
        con.close()
    return count, digest.hexdigest()


class Checksum:
    """:func:`checksum`, fed chunk by chunk."""

    def __init__(self, exchange: str, symbol: str) -> None:
        self._digest = hashlib.sha256()
        self._prefix = f"{exchange}\t{symbol}\t"
        self.count = 0

    def update(self, rows: Iterable[Row]) -> None:
        prefix, update = self._prefix, self._digest.update
        for row in rows:
            update((prefix + "\t".join(map(str, row)) + "\n").encode())
            self.count += 1

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def checksum(exchange: str, symbol: str, rows: Iterable[Row]) -> str:
    """SHA-256 over the rows' text, one tab-separated line each, in the order given (callers pass key
    order): what the database holds and what a file gives back must agree on it to the last digit."""
    digest = Checksum(exchange, symbol)
    digest.update(rows)
    return digest.hexdigest()
