"""The `marketflow export` options, apart from the exporter so that building the command line does not
load pyarrow (every command builds the whole parser)."""

from __future__ import annotations

import argparse

from marketflow.archive.tables import TABLES


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", required=True, metavar="TIME", help="ISO 8601 (UTC) or epoch ms")
    parser.add_argument("--until", required=True, metavar="TIME", help="ISO 8601 (UTC) or epoch ms, excluded")
    parser.add_argument("--exchange", default=None, help="only this exchange (a feed's exchange)")
    parser.add_argument("--symbol", default=None, help="only this normalized symbol (BTC-USDT)")
    parser.add_argument("--format", default="parquet", choices=("parquet", "csv"), help="default parquet")
    parser.add_argument(
        "--tables",
        default="trades",
        metavar="LIST",
        help=f"comma-separated, default trades: {', '.join(TABLES)}",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config (default: $MARKETFLOW_CONFIG, else ./marketflow.toml, else built-in defaults)",
    )
