"""`marketflow` command line (SPEC §2). Exit codes: 0 clean stop, 2 bad usage or config, 1 anything else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import attrs
import trio

from marketflow import __version__
from marketflow.config import Config, ConfigError, default_config, load_config, resolve_config_path
from marketflow.logs import configure_logging

log = logging.getLogger("marketflow.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config (default: $MARKETFLOW_CONFIG, else ./marketflow.toml, else built-in defaults)",
    )


def build_parser() -> argparse.ArgumentParser:
    from marketflow.api.keys import add_keys_arguments
    from marketflow.sim import add_arguments as add_sim_arguments
    from marketflow.storage.migrate import add_db_arguments

    parser = argparse.ArgumentParser(
        prog="marketflow",
        description="Exact crypto market data: trades, books and order flow, stored and served.",
    )
    parser.add_argument("--version", action="version", version=f"marketflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    _add_config_arg(run)

    demo = sub.add_parser("demo", help="offline demo: the exchange simulator and the daemon against it")
    _add_config_arg(demo)
    demo.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    demo.add_argument("--rate", type=float, default=20.0, metavar="N", help="trade frames/s per symbol")
    demo.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    demo.add_argument(
        "--listen", default=None, metavar="HOST:PORT", help="HTTP address (default: [http] listen)"
    )

    sim = sub.add_parser("sim", help="the exchange simulator alone (Bybit v5 and Binance on one port)")
    add_sim_arguments(sim)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", metavar="PATH")

    add_db_arguments(sub.add_parser("db", help="database schema: upgrade, current, check"))
    add_keys_arguments(sub.add_parser("keys", help="API keys: create, list, revoke"))
    return parser


def _load(config_arg: str | None) -> Config:
    path = resolve_config_path(config_arg, os.environ)
    return load_config(path) if path is not None else default_config()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        config = load_config(args.path)
        print(f"{args.path}: OK ({len(config.feeds)} feeds)")
        return EXIT_OK
    if args.command == "db":
        from marketflow.storage.migrate import run_db_command

        configure_logging("info", "console")
        return run_db_command(args)
    if args.command == "keys":
        from marketflow.api.keys import run_keys_command

        return run_keys_command(args)
    if args.command == "sim":
        from marketflow.sim import run_from_args

        configure_logging("info", "console")
        trio.run(run_from_args, args)
        return EXIT_OK
    if args.command == "run":
        from marketflow.daemon import serve

        config = _load(args.config)
        configure_logging(config.daemon.log_level, config.daemon.log_format)
        return _run_guarded(serve, config)
    if args.command == "demo":
        from marketflow.demo import run_demo

        config = _load(args.config)
        configure_logging(config.daemon.log_level, config.daemon.log_format)
        if args.listen is not None:
            config = attrs.evolve(config, http=attrs.evolve(config.http, listen=args.listen))
        return _run_guarded(run_demo, config, args.duration, args.rate, args.seed)
    raise AssertionError(args.command)


def _run_guarded(fn: object, *args: object) -> int:
    try:
        trio.run(fn, *args)  # type: ignore[arg-type]
    except Exception:
        log.exception("marketflow failed")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
