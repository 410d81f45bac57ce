"""PostgreSQL storage through asyncpg, driven from trio through a dedicated asyncio thread.

Why a thread and not trio-asyncio: for COPY batches of thousands of rows both measured the same within
this machine's noise (`benchmarks/storage.py`: medians 64k vs 74k rows/s with overlapping ranges, round
trips 324 vs 373 µs; a 5000-row batch takes ~80 ms, so the hop is under 1%), but importing trio_asyncio
changes asyncio's loop policy for the whole process, and its loop only serves the trio task tree that
opened it. The thread serves any trio task (writer, pruner, HTTP readers) and restarts with the store.

Writes (`write_trades`) are idempotent by the `trades_identity` key and use the fastest path measured:
an optimistic binary COPY straight into `trades` (as fast as a raw COPY when every row is new, the normal
case); when a batch holds a row the table already has (spool replays, redundant daemons, backfill) the
COPY fails as a whole and that batch, and the next `CONFLICT_BATCHES` ones, go through COPY into a
per-connection temporary staging table and `INSERT ... ON CONFLICT DO NOTHING`.

Times cross the wire as integer microseconds through asyncpg's tuple codec for timestamptz, so no
`datetime` is built per row; prices and amounts are `Decimal` into NUMERIC, exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import trio

from marketflow.model import Contract, DerivativesTick, GapRecord, Liquidation, Trade
from marketflow.storage import aggregates, market_rows, migrate
from marketflow.storage import records as records_sql
from marketflow.storage.store import StorageError

T = TypeVar("T")

COLUMNS: Final = ("exchange", "symbol", "ts", "id", "price", "amount", "side", "recv_ts")
PG_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01T00:00:00Z, PostgreSQL's own epoch, in Unix µs
CONFLICT_BATCHES: Final = 64
CONNECT_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 5.0
STAGE_TABLE: Final = "marketflow_trades_stage"
WriteMethod = Literal["auto", "staging", "unnest"]

_INSERT_FROM_STAGE: Final = (
    f"INSERT INTO trades ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM {STAGE_TABLE} "
    "ON CONFLICT DO NOTHING"
)
_INSERT_UNNEST: Final = (
    f"INSERT INTO trades ({', '.join(COLUMNS)}) SELECT * FROM unnest($1::varchar[], $2::varchar[], "
    "$3::timestamptz[], $4::varchar[], $5::numeric[], $6::numeric[], $7::varchar[], $8::timestamptz[]) "
    "ON CONFLICT DO NOTHING"
)
_PRUNE: Final = (
    "DELETE FROM trades t USING (SELECT exchange, symbol, ts, id FROM trades WHERE ts < $1 ORDER BY ts "
    "LIMIT $2) old WHERE t.exchange = old.exchange AND t.symbol = old.symbol AND t.ts = old.ts "
    "AND t.id = old.id"
)


class AsyncioThread:
    """An asyncio event loop in its own thread, awaited from trio without blocking it.

    `run(fn, *args)` schedules `fn(*args)` on the loop; the loop thread wakes the trio task through the
    trio token when the coroutine is done. Cancelling the trio task cancels the asyncio task.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(target=self._main, args=(loop, ready), name=self.name, daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        loop = self._loop
        if loop is None or not self.running:
            raise StorageError(f"{self.name}: the asyncio thread is not running")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            # If trio is gone nobody waits for this result any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = asyncio.run_coroutine_threadsafe(_call(fn, args), loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            if not future.done():
                future.cancel()
        if future.cancelled():  # cancelled on the asyncio side (not by us): a failure like any other
            raise StorageError(f"{self.name}: the asyncio task was cancelled")
        return future.result()

    def stop(self) -> None:
        """Stop the loop and join the thread (blocking: call from a worker thread)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join()


async def _call(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)


def _encode_ts(us: int) -> tuple[int]:
    return (us - PG_EPOCH_US,)


def _decode_ts(value: tuple[int]) -> int:
    return value[0] + PG_EPOCH_US


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per connection: timestamptz as integer Unix µs; the session's staging table for idempotent COPY."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode_ts, decoder=_decode_ts, format="tuple"
    )
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} (LIKE trades INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    )


def records(batch: Sequence[Trade]) -> list[tuple[str, str, int, str, Decimal, Decimal, str, int]]:
    return [(t.exchange, t.symbol, t.ts, t.id, t.price, t.amount, t.side, t.recv_ts) for t in batch]


def _count(status: str) -> int:
    """Rows affected from a command tag: `COPY 5000`, `INSERT 0 42`, `DELETE 7`."""
    return int(status.rsplit(" ", 1)[-1])


async def copy_rows(conn: asyncpg.Connection, rows: list[Any], table: str = "trades") -> int:
    return _count(await conn.copy_records_to_table(table, records=rows, columns=COLUMNS))


async def insert_staged(conn: asyncpg.Connection, rows: list[Any]) -> int:
    async with conn.transaction():
        await copy_rows(conn, rows, STAGE_TABLE)
        return _count(await conn.execute(_INSERT_FROM_STAGE))


async def insert_unnest(conn: asyncpg.Connection, rows: list[Any]) -> int:
    return _count(await conn.execute(_INSERT_UNNEST, *(list(column) for column in zip(*rows, strict=True))))


class PostgresTradeStore:
    """Writes and reads trades in one PostgreSQL database (a small asyncpg pool on the asyncio thread)."""

    engine_name = "postgresql"

    def __init__(self, url: str, *, method: WriteMethod = "auto", pool_size: int = 3) -> None:
        self.url = url
        self.method = method
        self._dsn = migrate.asyncpg_dsn(url)
        self._display = migrate.display_url(url)
        self._pool_size = pool_size
        self._aio = AsyncioThread("marketflow-postgresql")
        self._pool: asyncpg.Pool | None = None
        self._conflict_batches = 0  # > 0: the next batches skip the optimistic COPY
        self.copy_conflicts = 0

    @property
    def display_url(self) -> str:
        return self._display

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check (or initialise an empty) schema, then connect. Raises StorageError; safe to call again."""
        if self._pool is not None:
            return
        await trio.to_thread.run_sync(migrate.prepare, self.url)
        self._aio.start()
        try:
            self._pool = await self._aio.run(self._create_pool)
        except Exception as exc:
            raise self._error("cannot connect to", exc) from exc

    async def _create_pool(self) -> asyncpg.Pool:
        # min_size=0: connections open on demand and stay while used; a floor would make asyncpg retry
        # in the background during an outage, logging a traceback each time, next to the writer's own retries.
        pool = asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._pool_size, init=init_connection, timeout=CONNECT_TIMEOUT_S
        )
        return await pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._aio.running:
            await self._aio.run(self._close_pool, pool)
        await trio.to_thread.run_sync(self._aio.stop)

    @staticmethod
    async def _close_pool(pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    def _error(self, doing: str, exc: BaseException) -> StorageError:
        return StorageError(f"{doing} PostgreSQL {self._display} failed: {type(exc).__name__}: {exc}")

    async def _on_pool(self, doing: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._pool is None:
            raise StorageError(f"PostgreSQL store {self._display} used before open()")
        try:
            return await self._aio.run(fn, self._pool, *args)
        except StorageError:
            raise
        except Exception as exc:  # asyncpg, OS and timeout errors alike: the writer retries
            raise self._error(doing, exc) from exc

    # -- writing ------------------------------------------------------------------------------------------

    async def write_trades(self, batch: Sequence[Trade]) -> int:
        """Insert a batch atomically; returns how many rows were new (duplicates are skipped)."""
        return await self._on_pool("insert into", self._write, batch)

    async def _write(self, pool: asyncpg.Pool, batch: Sequence[Trade]) -> int:
        rows = records(batch)  # built on the asyncio thread: the trio thread stays free
        async with pool.acquire() as conn:
            if self.method == "unnest":
                return await insert_unnest(conn, rows)
            if self.method == "auto" and self._conflict_batches == 0:
                try:
                    return await copy_rows(conn, rows)
                except asyncpg.UniqueViolationError:
                    self.copy_conflicts += 1
                    self._conflict_batches = CONFLICT_BATCHES
            self._conflict_batches = max(0, self._conflict_batches - 1)
            return await insert_staged(conn, rows)

    async def write_gaps(self, batch: Sequence[GapRecord]) -> None:
        """Upsert gap ledger records (a record is replaced when it closes)."""
        await self._execute_many(records_sql.POSTGRES["gaps"], records_sql.gap_rows(batch))

    async def write_book_snapshots(self, batch: Sequence[records_sql.BookSnapshotRow]) -> None:
        await self._execute_many(records_sql.POSTGRES["book_snapshots"], records_sql.book_rows(batch))

    async def write_candles(self, batch: Sequence[records_sql.CandleRow]) -> None:
        """Upsert candles (a late trade's correction replaces the stored candle)."""
        rows = records_sql.candle_rows(batch, exact_text=False)
        await self._execute_many(records_sql.POSTGRES["candles"], rows)

    async def write_derivatives(self, batch: Sequence[DerivativesTick]) -> None:
        """Upsert derivatives samples by (exchange, symbol, ts)."""
        rows = market_rows.derivative_rows(batch, exact_text=False)
        await self._execute_many(market_rows.POSTGRES["derivatives"], rows)

    async def write_liquidations(self, batch: Sequence[Liquidation]) -> None:
        """Insert liquidations; one already stored (same identity) is skipped."""
        rows = market_rows.liquidation_rows(batch, exact_text=False)
        await self._execute_many(market_rows.POSTGRES["liquidations"], rows)

    async def write_quotes(self, batch: Sequence[market_rows.QuoteRow]) -> None:
        rows = market_rows.quote_rows(batch, exact_text=False)
        await self._execute_many(market_rows.POSTGRES["quotes"], rows)

    async def query_derivatives(
        self, exchange: str, symbol: str, since: int | None, until: int | None, limit: int | None
    ) -> list[DerivativesTick]:
        """Derivatives samples, newest first."""
        return await market_rows.pg_derivatives(self.fetch, exchange, symbol, since, until, limit)

    async def query_liquidations(
        self, exchange: str, symbol: str | None, since: int | None, until: int | None, limit: int | None
    ) -> list[Liquidation]:
        """Liquidations, newest first."""
        return await market_rows.pg_liquidations(self.fetch, exchange, symbol, since, until, limit)

    async def prune_market_data(self, before_us: int, limit: int) -> int:
        """Delete up to `limit` of the oldest rows with `ts < before_us` from each §12 table."""
        return await self._on_pool("prune", self._prune_market, before_us, limit)

    @staticmethod
    async def _prune_market(pool: asyncpg.Pool, before_us: int, limit: int) -> int:
        deleted = 0
        async with pool.acquire() as conn:
            for table in market_rows.PRUNED_TABLES:
                deleted += _count(await conn.execute(market_rows.pg_prune(table), before_us, limit))
        return deleted

    async def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            await self._on_pool("write to", self._executemany, sql, rows)

    @staticmethod
    async def _executemany(pool: asyncpg.Pool, sql: str, rows: list[tuple[Any, ...]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(sql, rows)

    async def prune_trades(self, before_us: int, limit: int) -> int:
        """Delete up to `limit` of the oldest trades with `ts < before_us`; returns how many went."""
        return await self._on_pool("prune", self._prune, before_us, limit)

    @staticmethod
    async def _prune(pool: asyncpg.Pool, before_us: int, limit: int) -> int:
        async with pool.acquire() as conn:
            return _count(await conn.execute(_PRUNE, before_us, limit))

    # -- reading ------------------------------------------------------------------------------------------

    async def query_trades(
        self,
        exchange: str | None = None,
        symbol: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Trade]:
        """Trades newest first (by ts, then id), filtered, on a pool connection of its own."""
        clauses: list[str] = []
        params: list[Any] = []
        for sql, value in (("exchange =", exchange), ("symbol =", symbol), ("ts >=", since), ("ts <", until)):
            if value is not None:
                params.append(value)
                clauses.append(f"{sql} ${len(params)}")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        tail = ""
        if limit is not None:
            params.append(limit)
            tail = f" LIMIT ${len(params)}"
        sql = f"SELECT {', '.join(COLUMNS)} FROM trades{where} ORDER BY ts DESC, id DESC{tail}"
        rows = await self._on_pool("query", self._fetch, sql, params)
        d = aggregates.pg_decimal
        return [Trade(r[0], r[1], r[3], d(r[4]), d(r[5]), r[6], r[2], r[7]) for r in rows]

    @staticmethod
    async def _fetch(pool: asyncpg.Pool, sql: str, params: list[Any]) -> list[Any]:
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *params))

    async def count_trades(self) -> int:
        rows = await self._on_pool("count in", self._fetch, "SELECT count(*) FROM trades", [])
        return int(rows[0][0])

    # -- aggregates for analytics ranges (SQL in aggregates.py) -------------------------------------------

    async def fetch(self, sql: str, params: list[Any]) -> list[Any]:
        """Rows of one read-only statement, on a pool connection of its own."""
        return await self._on_pool("query", self._fetch, sql, params)

    async def aggregate_bars(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        step_us: int,
        large: Decimal | None,
        max_rows: int,
        contract: Contract | None = None,
    ) -> list[aggregates.BarRow]:
        """Per-bar aggregates computed by the server (see `aggregates.pg_bars`)."""
        return await aggregates.pg_bars(
            self.fetch, exchange, symbol, since, until, step_us, large, max_rows, contract
        )

    async def aggregate_cells(
        self,
        exchange: str,
        symbol: str,
        since: int | None,
        until: int | None,
        step_us: int | None,
        bin: Decimal,
        max_rows: int,
    ) -> list[aggregates.CellRow]:
        """Per-(bar, bin) or per-bin volumes computed by the server (see `aggregates.pg_cells`)."""
        return await aggregates.pg_cells(self.fetch, exchange, symbol, since, until, step_us, bin, max_rows)

    async def first_trade(
        self, exchange: str, symbol: str, since: int | None, until: int | None
    ) -> tuple[int, str, Decimal] | None:
        return await aggregates.pg_first_trade(self.fetch, exchange, symbol, since, until)

    async def first_trade_at(
        self, exchange: str, symbol: str, since: int, until: int, price: Decimal
    ) -> tuple[int, str] | None:
        return await aggregates.pg_first_trade_at(self.fetch, exchange, symbol, since, until, price)

    async def trade_ids(self, exchange: str, symbol: str, since: int, until: int | None) -> set[str]:
        return await aggregates.pg_trade_ids(self.fetch, exchange, symbol, since, until)
