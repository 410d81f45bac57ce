"""The `marketflow bench` plan: transport and stage bursts, sustained zero-loss rates, paced CPU and
latency, marketflow against cryptofeed as ratios."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from marketflow.bench.case import CaseResult, Client, Env, run_case
from marketflow.progress import Progress


@attrs.define
class Plan:
    frames: int = 200_000
    paced_rate: float = 20_000.0
    paced_seconds: float = 10.0
    transport_frames: int = 500_000
    storages: tuple[str, ...] = ("sqlite", "postgres")
    cryptofeed: bool = True
    step_seconds: float = 6.0
    mix_frames: int = 20_000
    """Frames per real-mix case (`marketflow.bench.mix`, in process); 0 skips the real-mix table."""
    mix_repeat: int = 5
    mix_wss_frames: int = 200_000
    """Frames per real-mix case over wss (transport, + decode); 0 skips them."""
    mix_paced_frames: int = 50_000
    """Frames per real-mix case over wss at `paced_rate` (+ the exact book, latency); 0 skips them. At
    most the blaster's distinct frames (`blaster.MIX_DISTINCT`): books must not see ids again."""
    mix_only: bool = False
    """The real-mix tables alone (no one-trade-frame cases)."""
    coalesce_ms: float | None = None
    """marketflow's read coalescing window in every blaster case (None: the daemon's default)."""


def sustained(
    env: Env, client: Client, plan: Plan, burst: CaseResult, log: Callable[[str], None]
) -> tuple[float, list[CaseResult]]:
    """The highest zero-loss rate: the burst's own rate if it lost nothing, else paced steps downwards."""
    if burst.loss == 0:
        return burst.trades_per_s, []
    tried: list[CaseResult] = []
    base = max(burst.trades_per_s, 1000.0)
    for factor in (0.8, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05):
        rate = round(base * factor, -2)
        frames = int(rate * plan.step_seconds)
        log(f"  {client.label}: paced {rate:,.0f} frames/s")
        case = run_case(
            env, client, frames=frames, rate=rate, tls=True, name=f"{client.label} paced {rate:.0f}"
        )
        tried.append(case)
        kept_up = case.seconds <= plan.step_seconds + 2.0
        if case.loss == 0 and kept_up:
            return rate, tried
    return 0.0, tried


def run_plan(env: Env, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {"cases": [], "sustained": {}, "stages": [], "paced": []}
    cases: list[CaseResult] = results["cases"]
    steps = 4 + 2 * len(plan.storages) + (4 if plan.cryptofeed else 0) + 2 + 2 * len(plan.storages)
    with Progress(total=steps, label="bench") as progress:

        def case(client: Client, **kw: Any) -> CaseResult:
            log(f"- {kw['name']}")
            result = run_case(env, client, **kw)
            cases.append(result)
            progress.advance(1)
            return result

        # 1. Transport per core, plain and TLS.
        for tls in (False, True):
            r = case(
                Client("marketflow", "transport"),
                frames=plan.transport_frames,
                rate=0,
                tls=tls,
                name=f"transport {'wss' if tls else 'ws'}",
            )
            results["stages"].append(r.json() | {"stage": "transport", "tls": tls})
        # 2. Stages at full speed over wss (what cryptofeed needs): CPU per frame each adds.
        stage_clients = [Client("marketflow", "decode"), Client("marketflow", "pipeline")]
        stage_clients += [Client("marketflow", "daemon", storage=s) for s in plan.storages]
        bursts: dict[str, CaseResult] = {}
        for client in stage_clients:
            r = case(client, frames=plan.frames, rate=0, tls=True, name=f"{client.label} burst")
            bursts[client.label] = r
            results["stages"].append(r.json() | {"stage": client.label, "tls": True})
        competitors: list[Client] = []
        if plan.cryptofeed:
            competitors = [Client("cryptofeed", "noop"), Client("cryptofeed", "postgres")]
            for client in competitors:
                r = case(client, frames=plan.frames, rate=0, tls=True, name=f"{client.label} burst")
                bursts[client.label] = r
        # 3. Sustained zero-loss rates: without storage and into PostgreSQL (and SQLite for marketflow).
        contenders = [Client("marketflow", "pipeline")]
        contenders += [Client("marketflow", "daemon", storage=s) for s in plan.storages]
        contenders += competitors
        for client in contenders:
            rate, tried = sustained(env, client, plan, bursts[client.label], log)
            cases.extend(tried)
            burst = bursts[client.label]
            results["sustained"][client.label] = {
                "zero_loss_rate": round(rate, 1),
                "burst_rate": round(burst.trades_per_s, 1),
                "burst_loss": burst.loss,
                "burst_loss_pct": round(100 * burst.loss / burst.frames, 2),
            }
        # 4. Paced over wss: CPU per frame at a fixed rate, and latency.
        paced_frames = int(plan.paced_rate * plan.paced_seconds)
        paced_clients = [Client("marketflow", "pipeline")]
        paced_clients += [Client("marketflow", "daemon", storage=s) for s in plan.storages]
        paced_clients += competitors
        for client in paced_clients:
            r = case(
                client, frames=paced_frames, rate=plan.paced_rate, tls=True, name=f"{client.label} paced"
            )
            results["paced"].append(r.json())
        # 5. Visibility through the HTTP API: polled every 10 ms, so measured apart from the CPU figures.
        for storage in plan.storages[:1]:
            client = Client("marketflow", "daemon", storage=storage)
            r = case(
                client,
                frames=paced_frames,
                rate=plan.paced_rate,
                tls=True,
                name=f"{client.label} paced, API polled",
                api_latency=True,
            )
            results["api"] = r.json()
    results["cases"] = [c.json() for c in cases]
    results["ratios"] = ratios(results)
    return results


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    sus = results["sustained"]
    paced = {p["client"]: p for p in results["paced"]}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    def rate(label: str) -> float | None:
        value = sus.get(label, {}).get("zero_loss_rate")
        return None if value is None else float(value)

    def cpu(label: str) -> float | None:
        value = paced.get(label, {}).get("cpu_us_per_frame")
        return None if value is None else float(value)

    return {
        "sustained_no_storage": ratio(rate("marketflow pipeline"), rate("cryptofeed noop")),
        "sustained_postgres": ratio(rate("marketflow daemon postgres"), rate("cryptofeed postgres")),
        "cpu_per_frame_paced_no_storage": ratio(cpu("cryptofeed noop"), cpu("marketflow pipeline")),
        "cpu_per_frame_paced_postgres": ratio(cpu("cryptofeed postgres"), cpu("marketflow daemon postgres")),
    }
