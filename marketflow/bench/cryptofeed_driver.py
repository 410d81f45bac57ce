"""Runs an unmodified cryptofeed against the local exchange simulator and reports what it received.

Run by the python of cryptofeed's own virtual environment (see `marketflow.bench.cryptofeed_env`), never
imported by marketflow: it imports only the standard library, cryptofeed and asyncpg (which cryptofeed's
PostgreSQL backend uses).

    python cryptofeed_driver.py --exchange bybit --market linear --ws-url wss://127.0.0.1:PORT/v5/public/linear
        --cafile ca.pem --symbols BTCUSDT --mode noop|postgres [--pg-host H --pg-port P --pg-user U
        --pg-database D] [--overflow block] [--report-interval 0.25]

Only the feed classes' endpoint lists are replaced (the simulator's address, an SSL context trusting
`--cafile`), and the symbol table is pre-loaded from a document shaped like the venue's instruments answer,
parsed by cryptofeed itself, so no REST request is made. Everything else is cryptofeed's default.

Standard output is JSON lines only: `{"event":"ready",...}` once every connection has subscribed, then
every `--report-interval` seconds `{"t":…,"trades":…,"last_ts":…,"cpu":…,"rss":…,…}`, `{"event":"error",…}`
and `{"event":"warning",…}` for cryptofeed's log records and exceptions, and `{"event":"final",…}` after a
graceful stop on SIGTERM/SIGINT (in postgres mode with the committed row count). cryptofeed's own log goes
to its default file in the working directory and to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import resource
import signal
import ssl
import sys
import time
import traceback
from typing import Any
from urllib.parse import urlsplit

QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "BTC", "ETH", "EUR", "DAI", "BNB", "BRZ")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# The trades table of cryptofeed's PostgreSQL backend: its documented schema (examples/postgres_tables.sql);
# the backend inserts into every non-serial column in table order.
TRADES_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (id serial PRIMARY KEY, timestamp TIMESTAMP, "
    "receipt_timestamp TIMESTAMP, exchange VARCHAR(32), symbol VARCHAR(32), side VARCHAR(8), "
    "amount NUMERIC(64, 32), price NUMERIC(64, 32), trade_id VARCHAR(64), order_type VARCHAR(32))"
)


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def split_symbol(symbol: str) -> tuple[str, str]:
    """`BTCUSDT` / `BTC-USDT` / `BTC/USDT` → ("BTC", "USDT")."""
    for sep in ("-", "/"):
        if sep in symbol:
            base, quote = symbol.split(sep, 1)
            return base.upper(), quote.upper()
    symbol = symbol.upper()
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot tell base from quote in symbol {symbol!r}; write it as BASE-QUOTE")


def instruments_document(exchange: str, market: str, symbols: list[str]) -> Any:
    """What the venue's instruments endpoint would answer for `symbols`: the fields cryptofeed reads."""
    pairs = [split_symbol(s) for s in symbols]
    if exchange == "bybit":
        contract = {"linear": "LinearPerpetual", "inverse": "InversePerpetual"}.get(market)
        rows = []
        for base, quote in pairs:
            row: dict[str, Any] = {
                "symbol": base + quote,
                "baseCoin": base,
                "quoteCoin": quote,
                "status": "Trading",
                "priceFilter": {"tickSize": "0.01"},
            }
            if contract:
                row["contractType"] = contract
            rows.append(row)
        # cryptofeed asks three categories and parses the list of answers
        return [{"retCode": 0, "result": {"category": market, "list": rows}}]
    rows = []
    for base, quote in pairs:
        row = {
            "symbol": base + quote,
            "status": "TRADING",
            "baseAsset": base,
            "quoteAsset": quote,
            "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}],
        }
        if market == "usdm":
            row.update(contractType="PERPETUAL", contractStatus="TRADING")
        rows.append(row)
    return {"symbols": rows}


def feed_base_class(exchange: str, market: str) -> Any:
    if exchange == "bybit":
        from cryptofeed.exchanges import Bybit

        return Bybit
    if market == "usdm":
        from cryptofeed.exchanges import BinanceFutures

        return BinanceFutures
    from cryptofeed.exchanges import Binance

    return Binance


def local_feed_class(args: argparse.Namespace, context: ssl.SSLContext) -> tuple[Any, ReadyWatch]:
    """The venue's feed class with its endpoints pointing at the simulator; nothing else changed."""
    base = feed_base_class(args.exchange, args.market)
    target = urlsplit(args.ws_url)
    rest_root = args.rest_url or f"https://{target.netloc}"

    def ws_address(address: str) -> str:
        if args.exchange == "bybit":  # keep the category path: the handler reads spot/linear from it
            return f"wss://{target.netloc}{urlsplit(address).path}"
        return args.ws_url.rstrip("/")  # Binance appends /stream?streams=… (USD-M: /market/…) itself

    ws_endpoints = [
        dataclasses.replace(
            ep,
            address=ws_address(ep.address),
            sandbox=None,
            options={**(ep.options or {}), "ssl": context},
        )
        for ep in base.websocket_endpoints
    ]
    rest_endpoints = [dataclasses.replace(ep, address=rest_root, sandbox=None) for ep in base.rest_endpoints]
    ready = ReadyWatch()

    async def subscribe(self: Any, conn: Any) -> None:
        await base.subscribe(self, conn)
        ready.subscribed(self)

    return (
        type(
            "Local" + base.__name__,
            (base,),
            {
                "websocket_endpoints": ws_endpoints,
                "rest_endpoints": rest_endpoints,
                "subscribe": subscribe,
            },
        ),
        ready,
    )


class ReadyWatch:
    """Says `ready` once every connection of the feed has sent its subscriptions; counts re-subscribes."""

    def __init__(self) -> None:
        self.subscribes = 0
        self.ready = False

    def subscribed(self, feed: Any) -> None:
        self.subscribes += 1
        if not self.ready and self.subscribes >= max(1, len(getattr(feed, "connection_handlers", ()) or ())):
            self.ready = True
            emit(
                {
                    "event": "ready",
                    "t": time.time(),
                    "cpu": time.process_time(),
                    "rss": rss_bytes(),
                    "subscribes": self.subscribes,
                }
            )


class TradeCounter:
    """The no-op callback: counts trades and keeps the last one's exchange timestamp."""

    __slots__ = ("count", "last_ts")

    def __init__(self) -> None:
        self.count = 0
        self.last_ts: float | None = None

    async def __call__(self, trade: Any, receipt_timestamp: float) -> None:
        self.count += 1
        self.last_ts = trade.timestamp


class JsonLogHandler(logging.Handler):
    """cryptofeed's warnings and errors as JSON lines, so the harness sees them (e.g. its queue-full drop)."""

    def emit(self, record: logging.LogRecord) -> None:
        out: dict[str, Any] = {
            "event": "error" if record.levelno >= logging.ERROR else "warning",
            "t": record.created,
            "logger": record.name,
            "message": record.getMessage()[:2000],
        }
        if record.exc_info and record.exc_info[1] is not None:
            out["exception"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"[:2000]
        emit(out)


def emit_exception(where: str, exc: BaseException) -> None:
    for one in exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,):
        emit(
            {
                "event": "error",
                "t": time.time(),
                "where": where,
                "exception": f"{type(one).__name__}: {one}"[:2000],
                "traceback": "".join(traceback.format_exception(one))[-4000:],
            }
        )


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        import cryptofeed
        from cryptofeed import FeedHandler
        from cryptofeed.defines import TRADES
        from cryptofeed.symbols import Symbols

        self.args = args
        self.version = getattr(cryptofeed, "__version__", None) or _dist_version()
        context = (
            ssl.create_default_context(cafile=args.cafile) if args.cafile else ssl.create_default_context()
        )
        feed_class, self.ready = local_feed_class(args, context)
        syms, info = feed_class._parse_symbol_data(
            instruments_document(args.exchange, args.market, args.symbols)
        )
        Symbols.set(feed_class.id, syms, info)
        std_symbols = [s for s, native in syms.items() if not str(native).startswith("p")]  # not USD-M PINDEX

        self.counter = TradeCounter()
        self.backend: Any = None
        callbacks: list[Any] = [self.counter]
        if args.mode == "postgres":
            from cryptofeed.backends.postgres import TradePostgres

            options: dict[str, Any] = {}
            if args.overflow is not None:
                options["overflow"] = args.overflow
            self.backend = TradePostgres(
                host=args.pg_host,
                port=args.pg_port,
                user=args.pg_user,
                pw=args.pg_password,
                db=args.pg_database,
                table=args.pg_table,
                **options,
            )
            callbacks.append(self.backend)
        self.handler = FeedHandler()  # its defaults: log file in the cwd, WARNING, uvloop when installed
        logging.getLogger("cryptofeed").addHandler(JsonLogHandler(logging.WARNING))
        self.feed = feed_class(symbols=std_symbols, channels=[TRADES], callbacks={TRADES: callbacks})
        self.handler.add_feed(self.feed)
        self.started = time.time()

    # -- reports -----------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        last = self.counter.last_ts
        out: dict[str, Any] = {
            "t": time.time(),
            "trades": self.counter.count,
            "last_ts": round(last * 1000) if last is not None else None,
            "cpu": time.process_time(),
            "rss": rss_bytes(),
            "frames": self._frames(),
            "subscribes": self.ready.subscribes,
        }
        stats = getattr(self.backend, "stats", None) if self.backend is not None else None
        if stats is not None:
            out.update(
                written=stats.written,
                queued=stats.qsize,
                dropped_overflow=stats.dropped_overflow,
                dropped_failed=stats.dropped_failed,
            )
        return out

    def _frames(self) -> int:
        total = 0
        for handler in getattr(self.feed, "connection_handlers", ()) or ():
            conn = handler.conn
            stats = getattr(conn, "stats", None)
            total += stats.received if stats is not None else getattr(conn, "received", 0)
        return total

    async def reporter(self) -> None:
        while True:
            await asyncio.sleep(self.args.report_interval)
            emit(self.report())

    async def final(self) -> None:
        out = self.report()
        out["event"] = "final"
        out["cryptofeed"] = self.version
        if self.args.mode == "postgres":
            try:
                out["rows"] = await self._count_rows()
            except Exception as exc:
                emit_exception("count rows", exc)
                out["rows"] = None
        emit(out)

    # -- PostgreSQL ---------------------------------------------------------------------------------------

    async def _pg(self) -> Any:
        import asyncpg

        a = self.args
        return await asyncpg.connect(
            host=a.pg_host, port=a.pg_port, user=a.pg_user, password=a.pg_password, database=a.pg_database
        )

    async def create_table(self) -> None:
        conn = await self._pg()
        try:
            await conn.execute(TRADES_DDL.format(table=self.args.pg_table))
        finally:
            await conn.close()

    async def _count_rows(self) -> int:
        conn = await self._pg()
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self.args.pg_table}"))
        finally:
            await conn.close()

    # -- running -------------------------------------------------------------------------------------------

    def loop_factory(self) -> Any:
        choice = self.args.loop
        if choice == "auto":
            choice = "uvloop" if self.handler.config.uvloop else "asyncio"  # what FeedHandler.run() would do
        if choice == "uvloop":
            try:
                import uvloop
            except ImportError:
                return None
            return uvloop.new_event_loop
        return None

    async def run_3x(self) -> int:
        """cryptofeed ≥ 3: FeedHandler.run_async() installs its own graceful-stop signal handlers."""
        loop = asyncio.get_running_loop()
        early_stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, early_stop.set)
        if self.args.mode == "postgres":
            await self.create_table()
        if early_stop.is_set():
            await self.final()
            return 0
        reporter = asyncio.create_task(self.reporter())
        status = 0
        try:
            await self.handler.run_async()
        except Exception as exc:
            emit_exception("feed handler", exc)
            status = 1
        finally:
            reporter.cancel()
        await self.final()
        return status

    async def run_2x(self) -> int:
        """cryptofeed 2.x: no run_async(); start the feeds on this loop and stop them with stop_async()."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if self.args.mode == "postgres":
            await self.create_table()
        self.handler.run(start_loop=False, install_signal_handlers=False)
        reporter = asyncio.create_task(self.reporter())
        await stop.wait()
        reporter.cancel()
        status = 0
        try:
            await self.handler.stop_async(loop=loop)
        except Exception as exc:
            emit_exception("feed handler stop", exc)
            status = 1
        await self.final()
        return status


def _dist_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("cryptofeed")
    except metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--exchange", choices=("bybit", "binance"), required=True)
    p.add_argument("--market", choices=("spot", "linear", "inverse", "usdm"), required=True)
    p.add_argument(
        "--ws-url", required=True, help="Bybit: the category URL; Binance: the bare host (or /usdm)"
    )
    p.add_argument("--rest-url", default=None, help="REST root (only so nothing ever leaves the machine)")
    p.add_argument("--cafile", default=None, help="PEM of the CA that signed the simulator's certificate")
    p.add_argument("--symbols", type=lambda s: [x for x in s.split(",") if x], required=True)
    p.add_argument("--mode", choices=("noop", "postgres"), default="noop")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--pg-password", default=None)
    p.add_argument("--pg-database", default="postgres")
    p.add_argument("--pg-table", default="trades")
    p.add_argument(
        "--overflow", choices=("block", "drop_oldest", "drop_new"), default=None, help="default: cryptofeed's"
    )
    p.add_argument("--report-interval", type=float, default=0.25)
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="auto: cryptofeed's")
    args = p.parse_args(argv)
    valid = {"bybit": ("spot", "linear", "inverse"), "binance": ("spot", "usdm")}[args.exchange]
    if args.market not in valid:
        p.error(f"--market {args.market} is not a {args.exchange} market (expected one of {valid})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        driver = Driver(args)
    except Exception as exc:
        emit_exception("setup", exc)
        return 2
    if hasattr(driver.handler, "run_async"):
        with asyncio.Runner(loop_factory=driver.loop_factory()) as runner:
            return runner.run(driver.run_3x())
    loop = asyncio.new_event_loop()  # 2.x: FeedHandler() already set uvloop's policy when configured
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(driver.run_2x())
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
