"""Offline exchange simulator: Bybit v5, Binance spot / USD-M, OKX v5 and Coinbase Advanced Trade public
streams and REST (SPEC §9, PROTOCOLS).

`SimServer(SimConfig(...))` is `nursery.start`-able; `marketflow sim` runs it from the command line through
`add_arguments` / `run_from_args`. Names: exchange `bybit` (markets `spot`, `linear`, `inverse`),
`binance` (markets `spot`, `usdm`), `okx` (`spot`, `swap`, `futures`) or `coinbase` (`spot`).
"""

from __future__ import annotations

import argparse
import os
import ssl
import tempfile

import trio

from marketflow.sim import binance, bybit
from marketflow.sim.faults import Faults, MalformedKind
from marketflow.sim.http import HttpRequest, HttpResponse
from marketflow.sim.market import DEFAULT_TRADE_HISTORY, SimTrade
from marketflow.sim.server import SimConfig, SimServer, SimStatistics

DEFAULT_PORT = 8765


def _symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    if not symbols:
        raise argparse.ArgumentTypeError("expected symbols like BTCUSDT,ETHUSDT")
    return symbols


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `marketflow sim` options to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 = any)")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="trade frames/s per subscribed topic; 0 = as fast as read"
    )
    parser.add_argument("--seed", type=int, default=1, help="market seed (same seed, same tape)")
    parser.add_argument(
        "--symbols",
        type=_symbols,
        default=("BTCUSDT", "ETHUSDT"),
        help="listed native symbols, comma-separated",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="stop each topic after N frames")
    parser.add_argument("--drop-every", type=float, default=None, metavar="S", help="drop all connections")
    parser.add_argument("--malformed-every", type=int, default=None, metavar="N", help="malformed frame rate")
    parser.add_argument("--stall-every", type=float, default=None, metavar="S", help="stall every S seconds")
    parser.add_argument("--stall-for", type=float, default=0.0, metavar="S", help="stall duration")
    parser.add_argument(
        "--reject-topic", action="append", default=[], metavar="T", help="refuse this topic (repeatable)"
    )
    parser.add_argument("--slow-pong", type=float, default=0.0, metavar="S", help="delay JSON pongs")
    parser.add_argument(
        "--tls", action="store_true", help="serve wss/https with a throwaway CA (needs trustme)"
    )
    parser.add_argument(
        "--skip-every", type=int, default=None, metavar="N", help="skip every N-th update of each book"
    )
    parser.add_argument(
        "--trade-while-unsubscribed",
        action="store_true",
        help="tapes and books keep moving once started, even with nobody subscribed",
    )
    parser.add_argument(
        "--trade-history",
        type=int,
        default=DEFAULT_TRADE_HISTORY,
        metavar="N",
        help="trades kept per tape for REST (recent-trade, aggTrades fromId); default %(default)s",
    )
    parser.add_argument(
        "--okx-zero-checksum",
        action="store_true",
        help="OKX books carry checksum 0 (as OKX sends since 2026-06); default: the real CRC32",
    )
    parser.add_argument(
        "--okx-legacy-books",
        action="store_true",
        help="OKX books carry no seqId/prevSeqId (older servers): checked by checksum alone",
    )
    parser.add_argument(
        "--okx-keepalive",
        type=float,
        default=60.0,
        metavar="S",
        help="an unchanged OKX book sends a keep-alive (prevSeqId == seqId) after S seconds",
    )
    parser.add_argument(
        "--coinbase-quiet",
        type=_symbols,
        default=(),
        metavar="P,P",
        help="Coinbase products listed that never trade nor change (XLM-USD): a quiet connection",
    )
    parser.add_argument(
        "--kraken-quiet",
        action="append",
        default=[],
        metavar="PAIR",
        help="a Kraken pair (ZZZ/USD) listed but never trading or changing: only heartbeats (repeatable)",
    )
    parser.add_argument(
        "--kraken-no-heartbeat",
        action="store_true",
        help="Kraken sends no heartbeats (a quiet pair's connection then goes silent)",
    )
    parser.add_argument(
        "--book-rate",
        type=float,
        default=10.0,
        metavar="N",
        help="book updates/s per book; 0 = as fast as read",
    )


def sim_config_from_args(args: argparse.Namespace) -> SimConfig:
    """The `SimConfig` described by parsed `add_arguments` options."""
    faults = Faults(
        drop_every_s=args.drop_every,
        malformed_every=args.malformed_every,
        stall_every_s=args.stall_every,
        stall_for_s=args.stall_for,
        reject_topics=tuple(args.reject_topic),
        slow_pong_s=args.slow_pong,
        skip_every_n_updates=args.skip_every,
    )
    return SimConfig(
        host=args.host,
        port=args.port,
        seed=args.seed,
        rate=args.rate,
        symbols=tuple(args.symbols),
        max_frames=args.max_frames,
        faults=faults,
        record_delivered=False,  # nobody can ask a command-line server for its ground truth
        trade_while_unsubscribed=args.trade_while_unsubscribed,
        book_rate=args.book_rate,
        trade_history=args.trade_history,
        okx_zero_checksum=args.okx_zero_checksum,
        okx_legacy_books=args.okx_legacy_books,
        okx_keepalive_s=args.okx_keepalive,
        kraken_quiet=tuple(args.kraken_quiet),
        kraken_heartbeat_s=None if args.kraken_no_heartbeat else 1.0,
        coinbase_quiet=tuple(args.coinbase_quiet),
    )


def self_signed_context() -> tuple[ssl.SSLContext, str]:
    """A server context for 127.0.0.1/localhost signed by a fresh CA, and the path of that CA's PEM."""
    try:
        import trustme
    except ImportError as exc:
        raise RuntimeError("--tls needs the 'trustme' package (pip install trustme)") from exc
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    fd, path = tempfile.mkstemp(prefix="marketflow-sim-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as out:
        out.write(ca.cert_pem.bytes())
    return context, path


async def run_from_args(args: argparse.Namespace) -> None:
    """Serve the simulator described by `args`, printing its URLs, until cancelled."""
    config = sim_config_from_args(args)
    context = None
    if args.tls:
        context, ca_path = self_signed_context()
        print(f"tls CA certificate written to {ca_path}", flush=True)
    server = SimServer(config, context)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for category in bybit.CATEGORIES:
            print(f"bybit {category:<8}{server.bybit_ws_url(category)}", flush=True)
        for market in binance.MARKETS:
            rest = server.binance_rest_base(market)
            print(f"binance {market:<6}{server.binance_ws_base(market)}  rest {rest}", flush=True)
        print(f"okx            {server.okx_ws_url()}  rest {server.http_url}", flush=True)
        print(f"coinbase       {server.coinbase_ws_url()}  rest {server.http_url}", flush=True)
        print(f"kraken         {server.urls('kraken', 'spot')[0]}  rest {server.http_url}", flush=True)
        print(f"http           {server.http_url}", flush=True)


__all__ = [
    "DEFAULT_PORT",
    "Faults",
    "HttpRequest",
    "HttpResponse",
    "MalformedKind",
    "SimConfig",
    "SimServer",
    "SimStatistics",
    "SimTrade",
    "add_arguments",
    "run_from_args",
    "self_signed_context",
    "sim_config_from_args",
]
