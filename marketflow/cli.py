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
    demo.add_argument(
        "--nats",
        action="store_true",
        help="a local NATS server and the collect, store and serve roles as separate processes",
    )

    sim = sub.add_parser("sim", help="the exchange simulator alone (every venue it speaks, on one port)")
    add_sim_arguments(sim)

    replay = sub.add_parser(
        "replay",
        help="feed capture files through the whole pipeline into storage",
        description="Feed capture files ([capture]) through the pipeline (no network, no HTTP) into the "
        "configuration's storage or --url, then print a summary. Exit 1 when a file is corrupt.",
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="*.jsonl.zst capture files (any order)")
    _add_config_arg(replay)
    replay.add_argument(
        "--url", default=None, metavar="URL", help="storage to write into (default: [storage] url)"
    )
    replay.add_argument(
        "--speed",
        default="fast",
        metavar="fast|recorded|FACTOR",
        help="fast (default: as fast as possible, the same rows every run), recorded, or a factor (10)",
    )

    bench = sub.add_parser(
        "bench",
        help="benchmark the pipeline against cryptofeed on the same simulated frames",
        description="Run marketflow's stages and cryptofeed (in its own venv, installed on first use) "
        "against a local frame blaster over ws/wss, into SQLite and a throwaway PostgreSQL; print a table, "
        "write bench.json and bench.png. Takes about 10 minutes; --quick about 3.",
    )
    bench.add_argument(
        "--out", default="bench-results", metavar="DIR", help="where to write (default ./bench-results)"
    )
    bench.add_argument("--frames", type=int, default=200_000, metavar="N", help="frames per full-speed case")
    bench.add_argument("--rate", type=float, default=20_000, metavar="N", help="frames/s of the paced cases")
    bench.add_argument("--seconds", type=float, default=10.0, metavar="S", help="length of the paced cases")
    bench.add_argument(
        "--storage", default="sqlite,postgres", metavar="LIST", help="storages to measure (sqlite,postgres)"
    )
    bench.add_argument("--no-cryptofeed", action="store_true", help="marketflow alone")
    bench.add_argument(
        "--coalesce-ms",
        type=float,
        default=None,
        metavar="MS",
        help="marketflow's read_coalesce_ms (0 to 50)",
    )
    bench.add_argument("--quick", action="store_true", help="smaller cases (a smoke run)")
    bench.add_argument("--mix-only", action="store_true", help="only the real-mix tables (about 5 minutes)")
    bench.add_argument(
        "--soak", type=float, default=None, metavar="MIN", help="instead: an RSS soak of MIN minutes"
    )
    bench.add_argument("--soak-symbols", type=int, default=100, metavar="N", help="symbols in the soak (100)")
    bench.add_argument("--keep", action="store_true", help="keep the work files (databases, logs)")
    bench.add_argument(
        "--nats",
        type=int,
        nargs="?",
        const=1_000_000,
        default=None,
        metavar="TRADES",
        help="instead: collect → JetStream → store → PostgreSQL against one process (default 1M trades)",
    )

    from marketflow.nats.tail import add_arguments as add_tail_arguments

    tail = sub.add_parser("tail", help="print a live NATS subject of a marketflow cluster (JSON lines)")
    _add_config_arg(tail)
    add_tail_arguments(tail)

    from marketflow.archive.args import add_export_arguments

    add_export_arguments(
        sub.add_parser(
            "export",
            help="export stored tables as hive-partitioned Parquet (or CSV) files",
            description="Write trades (and candles, derivatives, liquidations, quotes, gaps with "
            "--tables) of [--since, --until) as "
            "<out>/<table>/exchange=/symbol=/date=/data.parquet: exact decimals, UTC µs times, zstd; one "
            "file per partition, merged with the file an earlier export left (README: Archive).",
        )
    )

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", metavar="PATH")

    add_db_arguments(sub.add_parser("db", help="database schema: upgrade, current, check"))
    add_keys_arguments(sub.add_parser("keys", help="API keys: create, list, revoke"))
    return parser


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.nats is not None:
        from marketflow.bench import nats as bench_nats

        bench_nats.main(Path(args.out), args.nats)
        return EXIT_OK

    from marketflow.bench import run as bench

    storages = tuple(s for s in args.storage.split(",") if s)
    if args.coalesce_ms is not None and not 0 <= args.coalesce_ms <= 50:
        print(
            f"marketflow bench: --coalesce-ms: must be from 0 to 50, got {args.coalesce_ms:g}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    unknown = [s for s in storages if s not in ("sqlite", "postgres")]
    if unknown:
        print(
            f"marketflow bench: --storage: unknown storage {unknown[0]!r} (sqlite, postgres)", file=sys.stderr
        )
        return EXIT_USAGE
    plan = bench.Plan(
        frames=args.frames,
        paced_rate=args.rate,
        paced_seconds=args.seconds,
        storages=storages,
        cryptofeed=not args.no_cryptofeed,
        mix_only=args.mix_only,
        coalesce_ms=args.coalesce_ms,
    )
    if args.quick:
        plan = bench.Plan(
            frames=30_000,
            paced_rate=min(args.rate, 5_000),
            paced_seconds=3.0,
            transport_frames=100_000,
            storages=storages,
            cryptofeed=plan.cryptofeed,
            step_seconds=3.0,
            mix_frames=5_000,
            mix_repeat=2,
            mix_wss_frames=30_000,
            mix_paced_frames=10_000,
            mix_only=args.mix_only,
            coalesce_ms=args.coalesce_ms,
        )
    bench.main(
        out=Path(args.out), plan=plan, soak_minutes=args.soak, soak_symbols=args.soak_symbols, keep=args.keep
    )
    return EXIT_OK


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
    if args.command == "replay":
        from marketflow.replay import run_replay_command

        config = _load(args.config)
        # Progress goes to the terminal only; the log gets warnings and errors (or debug when asked).
        level = "warning" if config.daemon.log_level == "info" else config.daemon.log_level
        configure_logging(level, config.daemon.log_format)
        return run_replay_command(args, config)
    if args.command == "bench":
        return _bench(args)
    if args.command == "tail":
        from marketflow.nats.tail import run_tail

        return run_tail(args, _load(args.config))
    if args.command == "export":
        from marketflow.archive.export import run_export_command

        config = _load(args.config)
        configure_logging("warning", config.daemon.log_format)
        return run_export_command(args, config)
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
        if args.nats:
            from marketflow.nats.demo import run_nats_demo

            return _run_guarded(run_nats_demo, config, args.duration, args.rate, args.seed)
        return _run_guarded(run_demo, config, args.duration, args.rate, args.seed)
    raise AssertionError(args.command)


def _run_guarded(fn: object, *args: object) -> int:
    from marketflow.api.connections import raise_open_files_limit

    raise_open_files_limit()  # before the daemon sizes its HTTP connection cap from it
    try:
        trio.run(fn, *args)  # type: ignore[arg-type]
    except Exception:
        log.exception("marketflow failed")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
