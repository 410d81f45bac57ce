"""The tables the archive knows, as data: what `marketflow export` and the archiving job read and write.

Each :class:`ArchiveTable` names its database table, its columns with their kinds, the time column that
picks the `date=` partition and the key that identifies a row within a partition (used to merge a second
export into the same file and to order the file; one or two columns). A table whose key does not identify
a row (`quotes`: two best-bid/ask changes may share a µs) names its `identity` apart: the whole row, so a
merge keeps each distinct row once; it is read in pages that never split the rows of one key. Adding a
table is one more entry in :data:`TABLES`; nothing else in the exporter names a table.

Column kinds and their Parquet types:

- ``text``: string; ``int``: int64;
- ``time`` / ``time?`` (nullable): UTC instant, `timestamp[us, tz=UTC]` (integer µs in the database);
- ``decimal``: exact, `decimal128(38, 18)` (see :data:`DECIMAL_SCALE`); a file whose values need more
  fractional digits gets a wider scale for that column (``decimal128(38, s)``), never a rounded value;
- ``spelled``: a ``decimal`` plus an int8 column ``<name>_scale`` holding the number of fractional digits
  the exchange wrote, so ``"65114.20"`` comes back as ``"65114.20"`` and ``"1.5"`` as ``"1.5"``
  (a DECIMAL column has one scale for all its rows, which would pad every value to it); a null value
  (a derivatives field the venue did not send) has a null scale.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

__all__ = [
    "DECIMAL_PRECISION",
    "DECIMAL_SCALE",
    "TABLES",
    "ArchiveError",
    "ArchiveTable",
    "Column",
    "parse_tables",
]

DECIMAL_PRECISION: Final = 38
"""decimal128's largest precision (DuckDB, polars and pyarrow read it as DECIMAL(38, s))."""
DECIMAL_SCALE: Final = 18
"""Fractional digits of every decimal column: 20 integer digits are left, more than any price, amount or
volume needs, and 18 fractional digits hold any exchange's tick and lot (ETH's wei is 1e-18). One type in
every file keeps a dataset of many files one schema for DuckDB, polars and pyarrow."""

Kind = Literal["text", "int", "time", "time?", "decimal", "spelled"]


class ArchiveError(Exception):
    """An export or archive step cannot proceed; the message names the table, partition or value."""


@attrs.frozen
class Column:
    name: str
    kind: Kind


@attrs.frozen
class ArchiveTable:
    """One table as the archive sees it. ``columns`` excludes the partition columns exchange and symbol
    (they are the `exchange=`/`symbol=` directories, as hive partitioning expects)."""

    name: str
    time_column: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    identity: tuple[str, ...] = ()  # what makes a row one, when the key does not: () = the key

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def unique_key(self) -> bool:
        """True when the key identifies a row (keyset pages may then end anywhere)."""
        return not self.identity

    @property
    def merge_key(self) -> tuple[str, ...]:
        return self.identity or self.key


TRADES: Final = ArchiveTable(
    "trades",
    "ts",
    ("ts", "id"),
    (
        Column("ts", "time"),
        Column("id", "text"),
        Column("price", "spelled"),
        Column("amount", "spelled"),
        Column("side", "text"),
        Column("recv_ts", "time"),
    ),
)

CANDLES: Final = ArchiveTable(
    "candles",
    "start",
    ("interval", "start"),
    (
        Column("interval", "text"),
        Column("start", "time"),
        *(Column(name, "decimal") for name in ("open", "high", "low", "close")),
        *(Column(name, "decimal") for name in ("volume", "buy_volume", "sell_volume")),
        Column("trades", "int"),
        Column("vwap", "decimal"),
    ),
)

GAPS: Final = ArchiveTable(
    "gaps",
    "start",
    ("channel", "start"),
    (
        Column("channel", "text"),
        Column("start", "time"),
        Column("end", "time?"),
        Column("reason", "text"),
        Column("recovered", "int"),
    ),
)

DERIVATIVES: Final = ArchiveTable(
    "derivatives",
    "ts",
    ("ts",),  # one sample per (exchange, symbol, ts): the table's unique key
    (
        Column("ts", "time"),
        *(Column(name, "spelled") for name in ("mark_price", "index_price", "funding_rate")),
        Column("next_funding_ts", "time?"),
        *(Column(name, "spelled") for name in ("open_interest", "open_interest_value")),
    ),
)

LIQUIDATIONS: Final = ArchiveTable(
    "liquidations",
    "ts",
    ("ts", "id"),
    (
        Column("ts", "time"),
        Column("id", "text"),
        Column("side", "text"),
        Column("price", "spelled"),
        Column("amount", "spelled"),
        Column("recv_ts", "time"),
    ),
)

QUOTES: Final = ArchiveTable(
    "quotes",
    "ts",
    ("ts",),
    (Column("ts", "time"), *(Column(name, "spelled") for name in ("bid", "bid_size", "ask", "ask_size"))),
    identity=("ts", "bid", "bid_size", "ask", "ask_size"),
)

TABLES: Final[dict[str, ArchiveTable]] = {
    t.name: t for t in (TRADES, CANDLES, DERIVATIVES, LIQUIDATIONS, QUOTES, GAPS)
}
"""Every table that can be exported, by name."""


def parse_tables(text: str) -> list[ArchiveTable]:
    """`"trades,candles"` → the tables, in the order given; an unknown name is an :class:`ArchiveError`
    naming the valid ones."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ArchiveError(f"--tables is empty; valid tables: {', '.join(TABLES)}")
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise ArchiveError(f"--tables: unknown table {unknown[0]!r}; valid tables: {', '.join(TABLES)}")
    return [TABLES[n] for n in dict.fromkeys(names)]
