"""The other tables (SPEC §5): gap ledger records, periodic book snapshots and candles.

Both engines write them with the same upserts, compiled from `schema.py` for each dialect: a gap record
is replaced when it closes, a candle when a late trade corrects it, a book snapshot is written once.
Rows are built here so the engines only run statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

import msgspec
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Insert

from marketflow.model import GapRecord, Level
from marketflow.storage.schema import book_snapshots, candles, gaps


class CandleRow(Protocol):
    exchange: str
    symbol: str
    interval: str
    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    trades: int
    vwap: Decimal


class BookSnapshotRow(Protocol):
    exchange: str
    symbol: str
    ts: int
    depth: int
    bids: list[Level]
    asks: list[Level]


def _upsert(dialect: Any, table: Any, keys: list[str]) -> Insert:
    stmt = dialect.insert(table)
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    upsert: Insert = stmt.on_conflict_do_update(index_elements=keys, set_=updates)
    return upsert


def _compile(stmt: Insert, dialect: Any) -> str:
    return str(stmt.compile(dialect=dialect))


_GAP_KEYS = ["exchange", "symbol", "channel", "start"]
_CANDLE_KEYS = ["exchange", "symbol", "interval", "start"]

# The dialect constructors are untyped; reached through getattr they are plain Any.
_SQLITE: Any = getattr(sqlite, "dialect")(paramstyle="qmark")  # noqa: B009
_POSTGRES: Any = getattr(postgresql, "dialect")(paramstyle="numeric_dollar")  # noqa: B009


def _statements(module: Any, dialect: Any) -> dict[str, str]:
    return {
        "gaps": _compile(_upsert(module, gaps, _GAP_KEYS), dialect),
        "candles": _compile(_upsert(module, candles, _CANDLE_KEYS), dialect),
        "book_snapshots": _compile(module.insert(book_snapshots).on_conflict_do_nothing(), dialect),
    }


SQLITE = _statements(sqlite, _SQLITE)
POSTGRES = _statements(postgresql, _POSTGRES)


def _levels(levels: list[Level]) -> str:
    return msgspec.json.encode([[str(p), str(q)] for p, q in levels]).decode()


def gap_rows(records: Sequence[GapRecord]) -> list[tuple[Any, ...]]:
    return [(r.exchange, r.symbol, r.channel, r.start, r.end, r.reason, r.recovered) for r in records]


def book_rows(snapshots: Sequence[BookSnapshotRow]) -> list[tuple[Any, ...]]:
    return [(s.exchange, s.symbol, s.ts, s.depth, _levels(s.bids), _levels(s.asks)) for s in snapshots]


def candle_rows(rows: Sequence[CandleRow], *, exact_text: bool) -> list[tuple[Any, ...]]:
    """Decimals as text for SQLite (it has no exact decimal type), as Decimal for PostgreSQL NUMERIC."""
    conv: Any = str if exact_text else (lambda d: d)
    return [
        (
            c.exchange,
            c.symbol,
            c.interval,
            c.start,
            conv(c.open),
            conv(c.high),
            conv(c.low),
            conv(c.close),
            conv(c.volume),
            conv(c.buy_volume),
            conv(c.sell_volume),
            c.trades,
            conv(c.vwap),
        )
        for c in rows
    ]
