"""`marketflow tail KIND EXCHANGE SYMBOL`: print a live subject, one JSON object a line (exact decimals as
strings, times as µs), until Ctrl-C or `--count` records."""

from __future__ import annotations

import argparse
import sys

import msgspec
import trio

from marketflow.config import Config
from marketflow.exchanges import VENUES
from marketflow.nats.schema import KINDS

_encoder = msgspec.json.Encoder(decimal_format="string")
STATE_KINDS = ("book", "ticker", "derivatives")
"""Kinds whose every message is a whole state: a tail starts from the newest of each subject."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help=", ".join(KINDS))
    parser.add_argument("exchange", help=f"one of {', '.join(sorted(VENUES))}, or * for every exchange")
    parser.add_argument("symbol", help="normalized, e.g. BTC-USDT or BTC-USDT-PERP, or * for every symbol")
    parser.add_argument(
        "--servers", default=None, metavar="URLS", help="NATS URLs, comma-separated (default: [nats] servers)"
    )
    parser.add_argument(
        "--deliver",
        choices=("new", "all", "last"),
        default=None,
        help="new: from now (trades, liquidations, candles default); last: the newest per subject, then "
        "live (book, ticker, derivatives default); all: everything the stream holds",
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N records")


def run_tail(args: argparse.Namespace, config: Config) -> int:
    servers = tuple(s for s in (args.servers or "").split(",") if s) or config.nats.servers
    if not servers:
        print("marketflow tail: no NATS servers: give --servers or set [nats] servers", file=sys.stderr)
        return 2
    deliver = args.deliver or ("last" if args.kind in STATE_KINDS else "new")
    trio.run(_tail, servers, args.kind, args.exchange, args.symbol.upper(), config, deliver, args.count)
    return 0


async def _tail(
    servers: tuple[str, ...],
    kind: str,
    exchange: str,
    symbol: str,
    config: Config,
    deliver: str,
    count: int | None,
) -> None:
    from marketflow.client import subscribe  # the NATS client loads only for this command

    seen = 0
    out = sys.stdout.buffer
    async with subscribe(
        servers,
        kind,
        exchange.lower(),
        symbol,
        prefix=config.nats.subject_prefix,
        deliver=deliver,  # type: ignore[arg-type]
    ) as feed:
        async for record in feed:
            out.write(_encoder.encode(record) + b"\n")
            out.flush()
            seen += 1
            if count is not None and seen >= count:
                return
