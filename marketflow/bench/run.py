"""`marketflow bench`: marketflow against cryptofeed on the same frames, same TLS, same PostgreSQL.

Every case runs three processes on this machine: the blaster (`marketflow.bench.blaster`, real Bybit v5 /
Binance trade frames at a set or maximum rate), the client under test (a marketflow stage,
`marketflow.bench.worker`, or cryptofeed through `cryptofeed_driver.py` in its own virtual environment),
and this harness, which starts the flow once the client is subscribed, samples the client's CPU and RSS
from /proc every 0.1 s, polls marketflow's HTTP API for visibility latency, and stops everything.

Figures per case: trades the client delivered (for storage cases: committed rows), frames/s, CPU µs per
frame (client process only, from the first frame to the last), loss, RSS, and for marketflow's daemon
the exchange-time → committed-row and → API latencies. The sustained zero-loss rate of a client is its
full-speed rate when a burst loses nothing (TCP back-pressure paces the blaster), else the highest paced
rate (stepping down) that loses nothing and keeps up.

The parts: `measure` (/proc samples, a child's JSON lines), `case` (one case), `plan` (the cases, sustained
rates, ratios), `soak`, `mixwss` (the real mix over wss); this module prepares the environment and reports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import attrs

# The harness's parts, importable from here as before the split.
from marketflow.bench.case import ApiPoller, Blaster, CaseResult, Client, Env, run_case
from marketflow.bench.measure import JsonLines, latency_summary, percentile, proc_cpu_s, proc_rss
from marketflow.bench.plan import Plan, ratios, run_plan, sustained
from marketflow.bench.soak import soak

__all__ = [
    "ApiPoller",
    "Blaster",
    "CaseResult",
    "Client",
    "Env",
    "JsonLines",
    "Plan",
    "environment",
    "latency_summary",
    "main",
    "percentile",
    "proc_cpu_s",
    "proc_rss",
    "ratios",
    "run_case",
    "run_plan",
    "soak",
    "sustained",
]


@contextmanager
def environment(
    workdir: Path, want_pg: bool, want_cryptofeed: bool, log: Callable[[str], None]
) -> Iterator[Env]:
    env = Env(workdir)
    with ExitStack() as stack:
        if want_pg:
            from marketflow.bench import pgcluster

            if pgcluster.have_server_binaries():
                log("starting a throwaway PostgreSQL cluster")
                env.pg_cluster = stack.enter_context(pgcluster.throwaway_cluster())
            else:
                log("no PostgreSQL server binaries found: PostgreSQL cases are skipped")
        if want_cryptofeed:
            from marketflow.bench import cryptofeed_env

            log("preparing cryptofeed's virtual environment (first run installs it)")
            env.cryptofeed = cryptofeed_env.ensure_venv(progress=lambda m: log(f"  {m}"))
            log(f"  cryptofeed {env.cryptofeed.version} at {env.cryptofeed.python}")
        yield env


def main(
    *,
    out: Path,
    plan: Plan,
    soak_minutes: float | None,
    soak_symbols: int,
    keep: bool,
    stream: IO[str] = sys.stdout,
) -> dict[str, Any]:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="marketflow-bench-"))
    want_pg = "postgres" in plan.storages and soak_minutes is None and not plan.mix_only
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "plan": attrs.asdict(plan),
    }
    try:
        want_cf = plan.cryptofeed and soak_minutes is None and not plan.mix_only
        with environment(workdir, want_pg, want_cf, log) as env:
            env.coalesce_ms = plan.coalesce_ms
            if env.pg_cluster is None:
                plan = attrs.evolve(plan, storages=tuple(s for s in plan.storages if s != "postgres"))
            if env.cryptofeed is not None:
                report["cryptofeed"] = {
                    "version": env.cryptofeed.version,
                    "python": str(env.cryptofeed.python),
                }
            if soak_minutes is not None:
                report["soak"] = soak(env, soak_minutes, soak_symbols, log)
            else:
                if plan.mix_frames:
                    from marketflow.bench import mix

                    report["mix"] = mix.run(plan.mix_frames, plan.mix_repeat, 64, plan.cryptofeed, log)
                if plan.mix_wss_frames or plan.mix_paced_frames:
                    from marketflow.bench import mixwss

                    if plan.mix_wss_frames:
                        report["mix_wss"] = mixwss.mix_over_wss(env, plan, log)
                    if plan.mix_paced_frames:
                        report["mix_paced"] = mixwss.mix_paced(env, plan, log)
                if not plan.mix_only:
                    report.update(run_plan(env, plan, log))
    finally:
        if keep:
            log(f"work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    from marketflow.bench import report as render

    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print(render.table(report), file=stream)
    png = render.plot(report, out / "bench.png")
    print(
        f"\nJSON: {out / 'bench.json'}"
        + (f"\nplot: {png}" if png else "\nplot: skipped (pip install matplotlib)"),
        file=stream,
    )
    return report
