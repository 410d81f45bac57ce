"""Stored trades aggregated for analytics ranges (`marketflow/analytics/stored.py` assembles the answers).

PostgreSQL does the work in SQL, exactly: prices and amounts are NUMERIC, whose sums, products, min and max
are exact and keep the scale Python's `Decimal` keeps (a sum has the largest scale of its terms, a product
the sum of its factors' scales), so the figures are the ones the Python accumulators would reach, digit for
digit. Per bar (`date_bin(step, ts, epoch)`: epoch-aligned, floored) one row: first and last trade by
(ts, id) — the aggregate gives the bar's first and last ts, and two index probes pick the trade with the
smallest / largest id at those times (`COLLATE "C"`: code-point order, as Python compares strings) —
high, low, buy and sell volume, Σ price·amount, count, large count. Per (bar, bin) or per bin one row with
the bin's integer index `div(price, bin)` (exact, truncating; floored for negative prices) and its bid and
ask volume. Rows come back per bar and per cell, never per trade; `max_rows` bounds them.

A bar whose trades write the same price with different trailing zeros (`65114.2` and `65114.20`) could
get either spelling from `max()`/`min()`; such bars (rare: an exchange writes one scale per market) are
detected by `scale(price)` and their high and low fetched again as the first trade by (ts, id) at the
extreme price, which is what the Python accumulators keep.

SQLite stores prices and amounts as TEXT (its arithmetic is binary floating point, so SQL sums would not
be exact): it only streams the range's trades in (ts, id) order, in chunks, to a callback that folds them
into bars in Python (`scan_trades`), so memory holds bars, not trades.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final

import attrs

from marketflow.model import Contract

__all__ = [
    "SCAN_CHUNK_ROWS",
    "BarRow",
    "CellRow",
    "ScanRow",
    "pg_bars",
    "pg_cells",
    "pg_first_trade",
    "pg_first_trade_at",
    "pg_trade_ids",
    "sqlite_first_trade",
    "sqlite_scan",
    "sqlite_trade_ids",
]

SCAN_CHUNK_ROWS: Final = 5000

ScanRow = tuple[int, str, str, str, str]
"""A streamed SQLite trade: (ts, id, price text, amount text, side)."""

Fetch = Callable[[str, list[Any]], Any]
"""`PostgresTradeStore.fetch`: SQL and parameters → an awaitable list of records."""


@attrs.frozen
class BarRow:
    """One bar's aggregate of the trades with an amount > 0."""

    start: int
    first_ts: int
    first_id: str
    open: Decimal
    last_ts: int
    last_id: str
    close: Decimal
    high: Decimal
    low: Decimal
    buy: Decimal
    sell: Decimal
    pv: Decimal
    trades: int
    large: int


@attrs.frozen
class CellRow:
    """Volume of one price bin (in one bar, or over the whole range: ``start`` None) by taker side.

    ``index`` is ``floor(price / bin)``, an integral Decimal; the bin's price is ``index · bin``.
    """

    start: int | None
    index: Decimal
    bid: Decimal
    ask: Decimal


_ONE: Final = Decimal(1)


def pg_decimal(value: Decimal) -> Decimal:
    """A NUMERIC as PostgreSQL holds it: asyncpg decodes an integral value with trailing zeros as a
    positive exponent (`120000` → `Decimal('1.2E+5')`), which would change the exponent of every ratio
    computed from it (`vwap` 0.00001000 vs 0.000010000000). NUMERIC's scale is never negative, so a
    positive exponent always means scale 0."""
    return value.quantize(_ONE) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def _where(since: int | None, until: int | None, params: list[Any]) -> str:
    """`exchange = $1 AND symbol = $2` (already in `params`) and the time bounds, appended to `params`."""
    clauses = ["exchange = $1", "symbol = $2"]
    for sql, value in (("ts >=", since), ("ts <", until)):
        if value is not None:
            params.append(value)
            clauses.append(f"{sql} ${len(params)}")
    return " AND ".join(clauses)


_BIN_INDEX: Final = "div(price, {b}) - CASE WHEN price < 0 AND mod(price, {b}) <> 0 THEN 1 ELSE 0 END"


async def pg_bars(
    fetch: Fetch,
    exchange: str,
    symbol: str,
    since: int | None,
    until: int | None,
    step_us: int,
    large: Decimal | None,
    max_rows: int,
    contract: Contract | None = None,
) -> list[BarRow]:
    """The first `max_rows` bars of `step_us` (ascending) of the trades with `since <= ts < until`.

    `large` counts trades whose notional reaches it: price·amount, or with a `contract` price·amount·value
    (linear) or amount·value (inverse), SPEC §11."""
    params: list[Any] = [exchange, symbol]
    where = _where(since, until, params)
    params.extend([timedelta(microseconds=step_us), large, max_rows])
    step, notional, limit = (f"${len(params) - i}" for i in (2, 1, 0))
    value = "price * amount"
    if contract is not None:
        params.append(contract.value)
        factor = f"${len(params)}::numeric"
        value = f"amount * {factor}" if contract.inverse else f"price * amount * {factor}"
    sql = f"""
WITH b AS (
  SELECT date_bin({step}::interval, ts, timestamptz 'epoch') AS start,
         min(ts) AS first_ts, max(ts) AS last_ts, max(price) AS high, min(price) AS low,
         coalesce(sum(amount) FILTER (WHERE side = 'buy'), 0) AS buy,
         coalesce(sum(amount) FILTER (WHERE side <> 'buy'), 0) AS sell,
         sum(price * amount) AS pv, count(*) AS trades,
         count(*) FILTER (WHERE {value} >= {notional}::numeric) AS large,
         min(scale(price)) <> max(scale(price)) AS mixed
  FROM trades WHERE {where} AND amount > 0
  GROUP BY 1 ORDER BY 1 LIMIT {limit}
)
SELECT b.start, b.first_ts, o.id, o.price, b.last_ts, c.id, c.price, b.high, b.low, b.buy, b.sell, b.pv,
       b.trades, b.large, b.mixed
FROM b
CROSS JOIN LATERAL (
  SELECT t.id, t.price FROM trades t
  WHERE t.exchange = $1 AND t.symbol = $2 AND t.ts = b.first_ts AND t.amount > 0
  ORDER BY t.id COLLATE "C" LIMIT 1) o
CROSS JOIN LATERAL (
  SELECT t.id, t.price FROM trades t
  WHERE t.exchange = $1 AND t.symbol = $2 AND t.ts = b.last_ts AND t.amount > 0
  ORDER BY t.id COLLATE "C" DESC LIMIT 1) c
ORDER BY b.start"""
    rows = await fetch(sql, params)
    out: list[BarRow] = []
    for r in rows:
        high, low = r[7], r[8]
        if r[14]:  # mixed scales: the spelling of the first trade at the extreme, as Python keeps it
            low_ts = r[0] if since is None else max(r[0], since)
            high_ts = r[0] + step_us if until is None else min(r[0] + step_us, until)
            high, low = await _extremes(fetch, exchange, symbol, low_ts, high_ts)
        d = pg_decimal
        out.append(
            BarRow(
                r[0],
                r[1],
                r[2],
                d(r[3]),
                r[4],
                r[5],
                d(r[6]),
                d(high),
                d(low),
                d(r[9]),
                d(r[10]),
                d(r[11]),
                r[12],
                r[13],
            )
        )
    return out


async def _extremes(
    fetch: Fetch, exchange: str, symbol: str, since: int, until: int
) -> tuple[Decimal, Decimal]:
    first = 'ts, id COLLATE "C" LIMIT 1'
    where = "exchange = $1 AND symbol = $2 AND ts >= $3 AND ts < $4 AND amount > 0"
    sql = (
        f"(SELECT price FROM trades WHERE {where} ORDER BY price DESC, {first}) UNION ALL "
        f"(SELECT price FROM trades WHERE {where} ORDER BY price ASC, {first})"
    )
    rows = await fetch(sql, [exchange, symbol, since, until])
    return rows[0][0], rows[1][0]


async def pg_cells(
    fetch: Fetch,
    exchange: str,
    symbol: str,
    since: int | None,
    until: int | None,
    step_us: int | None,
    bin: Decimal,
    max_rows: int,
) -> list[CellRow]:
    """Volume per (bar, bin) — per bin over the range when `step_us` is None — at most `max_rows` rows."""
    params: list[Any] = [exchange, symbol]
    where = _where(since, until, params)
    params.append(bin)
    index = _BIN_INDEX.format(b=f"${len(params)}::numeric")
    if step_us is None:
        start = "NULL::timestamptz"
    else:
        params.append(timedelta(microseconds=step_us))
        start = f"date_bin(${len(params)}::interval, ts, timestamptz 'epoch')"
    params.append(max_rows)
    sql = (
        f"SELECT {start} AS start, {index} AS index, "
        "coalesce(sum(amount) FILTER (WHERE side <> 'buy'), 0) AS bid, "
        "coalesce(sum(amount) FILTER (WHERE side = 'buy'), 0) AS ask "
        f"FROM trades WHERE {where} AND amount > 0 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT ${len(params)}"
    )
    d = pg_decimal
    return [CellRow(r[0], d(r[1]), d(r[2]), d(r[3])) for r in await fetch(sql, params)]


async def pg_first_trade(
    fetch: Fetch, exchange: str, symbol: str, since: int | None, until: int | None
) -> tuple[int, str, Decimal] | None:
    """(ts, id, price) of the range's first trade with an amount > 0 by (ts, id), or None."""
    params: list[Any] = [exchange, symbol]
    where = _where(since, until, params)
    sql = f'SELECT ts, id, price FROM trades WHERE {where} AND amount > 0 ORDER BY ts, id COLLATE "C" LIMIT 1'
    rows = await fetch(sql, params)
    return (rows[0][0], rows[0][1], pg_decimal(rows[0][2])) if rows else None


async def pg_first_trade_at(
    fetch: Fetch, exchange: str, symbol: str, since: int, until: int, price: Decimal
) -> tuple[int, str] | None:
    """(ts, id) of the first trade by (ts, id) with an amount > 0 and a price equal to `price` (any scale)
    with `since <= ts < until`, or None: which spelling of an extreme comes first when a trade not stored
    yet writes it with another scale (`analytics/stored.py`). One bar's rows of the (exchange, symbol, ts)
    index."""
    sql = (
        "SELECT ts, id FROM trades WHERE exchange = $1 AND symbol = $2 AND ts >= $3 AND ts < $4 "
        'AND amount > 0 AND price = $5 ORDER BY ts, id COLLATE "C" LIMIT 1'
    )
    rows = await fetch(sql, [exchange, symbol, since, until, price])
    return (rows[0][0], rows[0][1]) if rows else None


async def pg_trade_ids(fetch: Fetch, exchange: str, symbol: str, since: int, until: int | None) -> set[str]:
    """Ids of the stored trades with `since <= ts < until`."""
    params: list[Any] = [exchange, symbol]
    where = _where(since, until, params)
    return {r[0] for r in await fetch(f"SELECT id FROM trades WHERE {where}", params)}


# -- SQLite: streamed, aggregated by the caller -------------------------------------------------------------


def _sqlite_where(exchange: str, symbol: str, since: int | None, until: int | None) -> tuple[str, list[Any]]:
    clauses = ["exchange = ?", "symbol = ?"]
    params: list[Any] = [exchange, symbol]
    for sql, value in (("ts >= ?", since), ("ts < ?", until)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    return " AND ".join(clauses), params


def sqlite_scan(
    path: str,
    exchange: str,
    symbol: str,
    since: int | None,
    until: int | None,
    consume: Callable[[Sequence[ScanRow]], bool],
    stop: threading.Event,
    chunk_rows: int = SCAN_CHUNK_ROWS,
) -> None:
    """Call `consume` with the range's trades in (ts, id) order, `chunk_rows` at a time (blocking: run it in
    a worker thread). Ends early when `consume` returns False (it has what it needs) or `stop` is set."""
    where, params = _sqlite_where(exchange, symbol, since, until)
    # The unique index (exchange, symbol, ts, id) serves the order: no sort, rows as the index holds them.
    sql = f"SELECT ts, id, price, amount, side FROM trades WHERE {where} ORDER BY ts, id"
    conn = sqlite3.connect(path)
    try:
        cursor = conn.execute(sql, params)
        while not stop.is_set():
            rows = cursor.fetchmany(chunk_rows)
            if not rows:
                return
            if not consume(rows):
                return
    finally:
        conn.close()


def sqlite_first_trade(
    path: str, exchange: str, symbol: str, since: int | None, until: int | None
) -> tuple[int, str, Decimal] | None:
    """(ts, id, price) of the range's first trade with an amount > 0 by (ts, id), or None."""
    where, params = _sqlite_where(exchange, symbol, since, until)
    conn = sqlite3.connect(path)
    try:
        cursor = conn.execute(
            f"SELECT ts, id, price, amount FROM trades WHERE {where} ORDER BY ts, id", params
        )
        for ts, id_, price, amount in cursor:
            if Decimal(amount) > 0:
                return ts, id_, Decimal(price)
        return None
    finally:
        conn.close()


def sqlite_trade_ids(path: str, exchange: str, symbol: str, since: int, until: int | None) -> set[str]:
    """Ids of the stored trades with `since <= ts < until`."""
    where, params = _sqlite_where(exchange, symbol, since, until)
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute(f"SELECT id FROM trades WHERE {where}", params)}
    finally:
        conn.close()
