"""`marketflow bench --nats`: trades/s and CPU per trade, collect → JetStream → store → PostgreSQL, against
the single-process path (the daemon's storage writer straight into PostgreSQL), in the same run.

Three processes per NATS case, measured from /proc: the collector (this module's `publish` worker: the
collect role's publisher, i.e. the storage writer over JetStream, fed `--trades` trades on its bus), a
`marketflow run` daemon with `roles = ["store"]`, and nats-server. The single-process case runs the same
worker writing through the daemon's PostgreSQL writer instead. Both start from an empty database; a case
ends when the database holds every trade (polled with psql, not by the processes measured), and loss is
`trades - rows` (duplicates are impossible by the table's key; rows are counted distinct anyway).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio

from marketflow.bench.measure import proc_cpu_s
from marketflow.bench.pgcluster import PgCluster, start_cluster
from marketflow.config import default_config
from marketflow.model import Trade
from marketflow.nats.server import NatsServer, single

SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT")
BATCH = 1000


def trades(n: int) -> list[list[Trade]]:
    """`n` distinct trades in bus batches (built before the clock starts)."""
    prices = [Decimal(f"{65000 + i % 100}.{i % 10}") for i in range(100)]
    amounts = [Decimal(f"0.{i:03d}") for i in range(1, 100)]
    t0 = time.time_ns() // 1000
    return [
        [
            Trade(
                "bench",
                SYMBOLS[i % 4],
                str(i),
                prices[i % 100],
                amounts[i % 99],
                "buy" if i % 2 else "sell",
                t0 + i,
                t0 + i,
            )
            for i in range(start, min(n, start + BATCH))
        ]
        for start in range(0, n, BATCH)
    ]


async def _feed(target: str, n: int, url: str, servers: tuple[str, ...], state_dir: str) -> None:
    from marketflow.nats.collect import make_publisher
    from marketflow.runtime.bus import Bus, Overflow
    from marketflow.storage import make_writer, open_store

    base = default_config(env={})
    config = attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=state_dir),
        storage=attrs.evolve(base.storage, url=url),
        nats=attrs.evolve(base.nats, servers=servers),
    )
    batches = trades(n)
    bus: Bus[Trade] = Bus("trades")
    sub = bus.subscribe("out", config.daemon.channel_capacity, Overflow.BLOCK)
    writer = make_publisher(config, sub) if target == "nats" else make_writer(config, open_store(url), sub)
    print("ready", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for batch in batches:
            await bus.publish(batch)
        # Closed only once everything is written: a closing writer gives the database a few seconds, then
        # spools the rest (the daemon's shutdown rule), which is not what is measured here.
        while (stats := writer.statistics()).rows_written + stats.duplicates < n:  # noqa: ASYNC110 - a counter
            await trio.sleep(0.01)
        bus.close()


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m marketflow.bench.nats")
    parser.add_argument("target", choices=("nats", "postgres"))
    parser.add_argument("--trades", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--servers", default="")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    servers = tuple(s for s in args.servers.split(",") if s)
    trio.run(_feed, args.target, args.trades, args.url, servers, args.state_dir)


@attrs.frozen
class NatsCase:
    name: str
    trades: int
    rows: int
    seconds: float
    trades_per_s: float
    cpu_us_per_trade: dict[str, float]

    def line(self) -> str:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in self.cpu_us_per_trade.items())
        return (
            f"{self.name:<28} {self.trades_per_s:>10,.0f} trades/s  {self.seconds:6.2f} s  "
            f"loss {self.trades - self.rows}  CPU µs/trade: {cpu}"
        )


def _rows(pg: PgCluster, database: str, *, distinct: bool = False) -> int:
    if not pg.psql(database, "SELECT to_regclass('public.trades')").strip():
        return 0
    what = "DISTINCT (exchange, symbol, id)" if distinct else "*"
    return int(pg.psql(database, f"SELECT count({what}) FROM trades").strip())


def _store_toml(path: Path, url: str, server: NatsServer, state_dir: Path) -> Path:
    path.write_text(
        f'[daemon]\nstate_dir = "{state_dir}"\nroles = ["store"]\n[http]\nlisten = "127.0.0.1:0"\n'
        f'[storage]\nurl = "{url}"\n[nats]\nservers = ["{server.url}"]\n'
    )
    return path


def run_case(name: str, n: int, pg: PgCluster, work: Path, server: NatsServer | None) -> NatsCase:
    database = f"bench_{name.replace('-', '_')}"
    url = pg.create_database(database)
    procs: dict[str, subprocess.Popen[Any]] = {}
    logs = work / f"{name}.log"
    with logs.open("a") as log:
        if server is not None:
            store_cfg = _store_toml(work / f"{name}-store.toml", url, server, work / f"{name}-store")
            procs["store"] = subprocess.Popen(
                [sys.executable, "-m", "marketflow", "run", "--config", str(store_cfg)],
                stdout=log,
                stderr=log,
            )
            while not pg.psql(database, "SELECT to_regclass('public.trades')").strip():
                time.sleep(0.1)  # until the store daemon created the schema: it is up
        target = "nats" if server is not None else "postgres"
        command = [sys.executable, "-m", "marketflow.bench.nats", target, "--trades", str(n), "--url", url]
        command += ["--state-dir", str(work / f"{name}-collect")]
        if server is not None:
            command += ["--servers", server.url]
        collect = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        procs["collect"] = collect
        assert collect.stdout is not None
        collect.stdout.readline()  # "ready": the trades are built
        before = {k: proc_cpu_s(p.pid) for k, p in procs.items()}
        if server is not None and server.process is not None:
            before["nats-server"] = proc_cpu_s(server.process.pid)
        started = time.monotonic()
        rows = 0
        while rows < n and time.monotonic() - started < 600:
            time.sleep(0.2)  # psql is not free: it shares the machine with what is measured
            rows = _rows(pg, database)
        seconds = time.monotonic() - started
        after = {k: proc_cpu_s(p.pid) for k, p in procs.items()}
        if server is not None and server.process is not None:
            after["nats-server"] = proc_cpu_s(server.process.pid)
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
        rows = _rows(pg, database, distinct=True)
    cpu = {k: (after[k] - before[k]) * 1e6 / n for k in before}
    cpu["total"] = sum(cpu.values())
    return NatsCase(name, n, rows, seconds, rows / seconds, cpu)


def main(out: Path, n: int) -> dict[str, Any]:
    """Run both cases; print and return the figures (also written to `out/bench-nats.txt`)."""
    out.mkdir(parents=True, exist_ok=True)
    results: list[NatsCase] = []
    work = out / "nats-work"  # configs and logs of the processes (kept: they say what happened)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    pg = start_cluster()
    server = single(work / "nats")
    server.start()
    try:
        trio.run(server.wait_ready)
        results.append(run_case("single-process", n, pg, work, None))
        print(results[-1].line(), flush=True)
        results.append(run_case("collect-jetstream-store", n, pg, work, server))
        print(results[-1].line(), flush=True)
    finally:
        server.stop()
        pg.destroy()
        shutil.rmtree(work / "nats", ignore_errors=True)  # the stream's files
    ratio = results[1].trades_per_s / results[0].trades_per_s
    summary = f"through NATS / single process: {ratio:.2f}x trades/s"
    print(summary, flush=True)
    (out / "bench-nats.txt").write_text("\n".join([r.line() for r in results] + [summary]) + "\n")
    return {"cases": [attrs.asdict(r) for r in results], "ratio": ratio}


if __name__ == "__main__":
    worker_main(sys.argv[1:])
