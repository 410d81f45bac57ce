"""The SPEC §12 tables for both engines: `derivatives` samples, `liquidations`, `quotes`.

Statements are compiled from `schema.py` per dialect; rows are built here so the engines only run them.
A derivatives sample is upserted by (exchange, symbol, ts) — a late field of an instant already written
replaces its row — and a liquidation is inserted once by its identity. Reads return the model's records,
newest first, decimals exactly as stored (text on SQLite, NUMERIC on PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol

from sqlalchemy.dialects import postgresql, sqlite

from marketflow.model import DerivativesTick, Liquidation
from marketflow.storage.aggregates import pg_decimal
from marketflow.storage.records import _POSTGRES, _SQLITE, _compile, _upsert
from marketflow.storage.schema import derivatives, liquidations, quotes


class QuoteRow(Protocol):
    exchange: str
    symbol: str
    ts: int
    bid: Decimal | None
    bid_size: Decimal | None
    ask: Decimal | None
    ask_size: Decimal | None


_DERIVATIVE_KEYS = ["exchange", "symbol", "ts"]


def _statements(module: Any, dialect: Any) -> dict[str, str]:
    return {
        "derivatives": _compile(_upsert(module, derivatives, _DERIVATIVE_KEYS), dialect),
        "liquidations": _compile(module.insert(liquidations).on_conflict_do_nothing(), dialect),
        "quotes": _compile(module.insert(quotes), dialect),
    }


SQLITE: Final = _statements(sqlite, _SQLITE)
POSTGRES: Final = _statements(postgresql, _POSTGRES)
PRUNED_TABLES: Final = ("derivatives", "liquidations", "quotes")
"""Tables retention prunes besides trades."""


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _same(value: Decimal | None) -> Decimal | None:
    return value


def derivative_rows(rows: Sequence[DerivativesTick], *, exact_text: bool) -> list[tuple[Any, ...]]:
    c = _text if exact_text else _same
    return [
        (
            r.exchange,
            r.symbol,
            r.ts,
            c(r.mark_price),
            c(r.index_price),
            c(r.funding_rate),
            r.next_funding_time,
            c(r.open_interest),
            c(r.open_interest_value),
        )
        for r in rows
    ]


def liquidation_rows(rows: Sequence[Liquidation], *, exact_text: bool) -> list[tuple[Any, ...]]:
    c: Any = str if exact_text else _same
    return [(r.exchange, r.symbol, r.ts, r.id, r.side, c(r.price), c(r.amount), r.recv_ts) for r in rows]


def quote_rows(rows: Sequence[QuoteRow], *, exact_text: bool) -> list[tuple[Any, ...]]:
    c = _text if exact_text else _same
    return [(r.exchange, r.symbol, r.ts, c(r.bid), c(r.bid_size), c(r.ask), c(r.ask_size)) for r in rows]


# -- reading --------------------------------------------------------------------------------------------

_DERIVATIVE_COLUMNS = (
    "exchange, symbol, ts, mark_price, index_price, funding_rate, next_funding_ts, open_interest, "
    "open_interest_value"
)
_LIQUIDATION_COLUMNS = "exchange, symbol, id, side, price, amount, ts, recv_ts"


def _select(
    table: str,
    columns: str,
    order: str,
    filters: Sequence[tuple[str, object]],
    limit: int | None,
    placeholder: Callable[[int], str],
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for sql, value in filters:
        if value is not None:
            params.append(value)
            clauses.append(f"{sql} {placeholder(len(params))}")
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    tail = ""
    if limit is not None:
        params.append(limit)
        tail = f" LIMIT {placeholder(len(params))}"
    return f"SELECT {columns} FROM {table}{where} ORDER BY {order}{tail}", params


def _filters(exchange: str | None, symbol: str | None, since: int | None, until: int | None) -> list[Any]:
    return [("exchange =", exchange), ("symbol =", symbol), ("ts >=", since), ("ts <", until)]


_ORDER = {
    "derivatives": (_DERIVATIVE_COLUMNS, "ts DESC"),
    "liquidations": (_LIQUIDATION_COLUMNS, "ts DESC, id DESC"),
}


def _newest_first(
    table: str,
    exchange: str | None,
    symbol: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
    placeholder: Callable[[int], str],
) -> tuple[str, list[Any]]:
    """The SELECT of `derivatives` or `liquidations` rows newest first, for either engine (`placeholder`
    spells the n-th parameter)."""
    columns, order = _ORDER[table]
    return _select(table, columns, order, _filters(exchange, symbol, since, until), limit, placeholder)


def _qmark(_: int) -> str:
    return "?"


def _dollar(n: int) -> str:
    return f"${n}"


def _derivative(r: Sequence[Any], dec: Callable[[Any], Decimal]) -> DerivativesTick:
    def opt(value: Any) -> Decimal | None:
        return None if value is None else dec(value)

    return DerivativesTick(
        r[0], r[1], r[2], r[2], opt(r[3]), opt(r[4]), opt(r[5]), r[6], opt(r[7]), opt(r[8]), snapshot=True
    )


def _liquidation(r: Sequence[Any], dec: Callable[[Any], Decimal]) -> Liquidation:
    return Liquidation(r[0], r[1], r[2], r[3], dec(r[4]), dec(r[5]), r[6], r[7])


def sqlite_derivatives(
    path: str,
    exchange: str | None,
    symbol: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
) -> list[DerivativesTick]:
    sql, params = _newest_first("derivatives", exchange, symbol, since, until, limit, _qmark)
    return [_derivative(r, Decimal) for r in _sqlite_rows(path, sql, params)]


def sqlite_liquidations(
    path: str,
    exchange: str | None,
    symbol: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
) -> list[Liquidation]:
    sql, params = _newest_first("liquidations", exchange, symbol, since, until, limit, _qmark)
    return [_liquidation(r, Decimal) for r in _sqlite_rows(path, sql, params)]


def _sqlite_rows(path: str, sql: str, params: list[Any]) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


Fetch = Callable[[str, list[Any]], Awaitable[list[Any]]]


async def pg_derivatives(fetch: Fetch, exchange: str | None, symbol: str | None, since: int | None,
                         until: int | None, limit: int | None) -> list[DerivativesTick]:  # fmt: skip
    sql, params = _newest_first("derivatives", exchange, symbol, since, until, limit, _dollar)
    return [_derivative(r, pg_decimal) for r in await fetch(sql, params)]


async def pg_liquidations(fetch: Fetch, exchange: str | None, symbol: str | None, since: int | None,
                          until: int | None, limit: int | None) -> list[Liquidation]:  # fmt: skip
    sql, params = _newest_first("liquidations", exchange, symbol, since, until, limit, _dollar)
    return [_liquidation(r, pg_decimal) for r in await fetch(sql, params)]


# -- retention ------------------------------------------------------------------------------------------


def sqlite_prune(table: str) -> str:
    return f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE ts < ? ORDER BY ts LIMIT ?)"


def pg_prune(table: str) -> str:
    return f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE ts < $1 ORDER BY ts LIMIT $2)"
