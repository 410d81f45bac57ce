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
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import attrs
import httpx

from marketflow.progress import Progress

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 0.1
API_POLL_S = 0.01
IDLE_TIMEOUT_S = 8.0
"""A case ends when the client has everything, or has delivered nothing new for this long."""
READY_TIMEOUT_S = 90.0


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(samples_us: Sequence[float]) -> dict[str, float | int | None]:
    ms = [s / 1000 for s in samples_us]
    return {
        "samples": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


class JsonLines:
    """A child process's JSON-lines stdout, read on a thread: the latest progress line and events."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.latest: dict[str, Any] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                event = record.get("event")
                if event in ("error", "warning"):
                    self.errors.append(str(record.get("text") or record))
                elif event:
                    self.events[event] = record
                if event in (None, "final"):
                    self.latest = record
                self._cond.notify_all()
        with self._cond:
            self.events.setdefault("exit", {})
            self._cond.notify_all()

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: name in self.events or "exit" in self.events, timeout)
            return self.events.get(name)


def _stop(proc: subprocess.Popen[str], grace_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@attrs.define
class Blaster:
    proc: subprocess.Popen[str]
    urls: dict[str, Any]
    lines: JsonLines | None = None
    """Its later lines (`sent`: when each topic's frames were out, and the wall time it started)."""

    @classmethod
    def start(
        cls,
        frames: int,
        rate: float,
        tls_dir: Path | None,
        symbols: str = "BTCUSDT",
        mix: str | None = None,
    ) -> Blaster:
        cmd = [sys.executable, "-m", "marketflow.bench.blaster", "--frames", str(frames), "--rate", str(rate)]
        cmd += ["--symbols", symbols, "--hold"]
        if mix is not None:
            cmd += ["--mix", mix]
        if tls_dir is not None:
            cmd += ["--tls", "--ca-file", str(tls_dir / "ca.pem")]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the blaster did not start")
        return cls(proc, json.loads(line), JsonLines(proc))

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@attrs.define
class Client:
    """How to start one client against a blaster: a marketflow stage or cryptofeed."""

    system: str  # "marketflow" | "cryptofeed"
    stage: str  # marketflow: transport/decode/pipeline/daemon; cryptofeed: noop/postgres
    storage: str | None = None  # None | "sqlite" | "postgres"
    overflow: str | None = None  # cryptofeed's PostgreSQL queue setting (None = its default)

    @property
    def label(self) -> str:
        parts = [self.system, self.stage]
        if self.storage and self.stage != self.storage:
            parts.append(self.storage)
        if self.overflow:
            parts.append(f"overflow={self.overflow}")
        return " ".join(parts)


@attrs.define
class Env:
    """What cases share: temp dir, the PostgreSQL cluster (if any), cryptofeed's interpreter."""

    workdir: Path
    pg_cluster: Any = None
    cryptofeed: Any = None  # cryptofeed_env.CryptofeedEnv
    exchange: str = "bybit"
    market: str = "linear"
    symbol: str = "BTCUSDT"
    mix: str | None = None
    """Real-mix cases: the venue whose mix the blaster serves (transport, decode and book stages)."""
    mix_frames: int = 0
    """Real-mix `book` cases: the distinct frames the blaster built (the client builds the same)."""
    coalesce_ms: float | None = None
    """marketflow's read coalescing window (None: the daemon's default)."""
    counter: int = 0

    def fresh_dir(self, name: str) -> Path:
        self.counter += 1
        path = self.workdir / f"{self.counter:02d}-{name.replace(' ', '_').replace('=', '')}"
        path.mkdir(parents=True)
        return path

    def storage_url(self, kind: str, where: Path) -> str:
        if kind == "sqlite":
            return f"sqlite:///{where}/bench.db"
        if self.pg_cluster is None:
            raise RuntimeError("PostgreSQL cases need a PostgreSQL server (none was found)")
        return str(self.pg_cluster.create_database())


@attrs.define
class CaseResult:
    name: str
    client: str
    tls: bool
    rate: float  # requested frames/s, 0 = as fast as read
    frames: int
    trades: int
    seconds: float
    cpu_s: float
    loss: int
    rss_max: int
    rss_end: int
    series: list[tuple[float, int, int]]  # (seconds since start, trades, rss)
    commit_latency: dict[str, Any] | None = None
    api_latency: dict[str, Any] | None = None
    commit_points: list[tuple[float, float]] = attrs.Factory(list)  # (s since start, latency ms)
    errors: list[str] = attrs.Factory(list)
    final: dict[str, Any] = attrs.Factory(dict)
    """The client's final line (not in the JSON: `book` cases hold a time per read)."""
    sent: dict[str, Any] = attrs.Factory(dict)
    """The blaster's `sent` line (its `first_wall`: when the first frame was due)."""

    @property
    def trades_per_s(self) -> float:
        return self.trades / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_frame(self) -> float | None:
        return self.cpu_s / self.trades * 1e6 if self.trades else None

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "client": self.client,
            "tls": self.tls,
            "rate_requested": self.rate,
            "frames_sent": self.frames,
            "trades_delivered": self.trades,
            "loss": self.loss,
            "seconds": round(self.seconds, 4),
            "frames_per_s": round(self.trades_per_s, 1),
            "cpu_s": round(self.cpu_s, 4),
            "cpu_us_per_frame": None if self.cpu_us_per_frame is None else round(self.cpu_us_per_frame, 3),
            "cpu_pct": round(100 * self.cpu_s / self.seconds, 1) if self.seconds else None,
            "rss_max_mb": round(self.rss_max / 2**20, 1),
            "rss_end_mb": round(self.rss_end / 2**20, 1),
            "latency_commit": self.commit_latency,
            "latency_api": self.api_latency,
            "series": self.series,
            "commit_points": self.commit_points,
            "errors": self.errors[:10],
        }


def _client_process(env: Env, client: Client, blaster: Blaster, tls_dir: Path | None, where: Path) -> Any:
    cafile = str(tls_dir / "ca.pem") if tls_dir is not None else None
    url_key = {"bybit": "bybit-linear", "okx": "okx", "coinbase": "coinbase", "kraken": "kraken"}
    ws_url = blaster.urls[url_key.get(env.exchange, "binance")]
    if client.system == "marketflow":
        cmd = [sys.executable, "-m", "marketflow.bench.worker", "--stage", client.stage, "--url", ws_url]
        if env.mix is not None:
            cmd += ["--count-frames", "--mix-frames", str(env.mix_frames)]
        cmd += ["--exchange", env.exchange, "--market", env.market, "--symbol", env.symbol]
        cmd += ["--state-dir", str(where)]
        if env.coalesce_ms is not None:
            cmd += ["--coalesce-ms", str(env.coalesce_ms)]
        if cafile:
            cmd += ["--cafile", cafile]
        if client.storage:
            cmd += ["--storage-url", env.storage_url(client.storage, where)]
        with open(where / "stderr.log", "w") as stderr:
            return subprocess.Popen(cmd, cwd=where, stdout=subprocess.PIPE, stderr=stderr, text=True)
    from marketflow.bench import cryptofeed_env

    pg = None
    if client.stage == "postgres":
        url = env.storage_url("postgres", where)
        pg = env.pg_cluster.dsn(url.rsplit("/", 1)[1])
    return cryptofeed_env.start_driver(
        env.cryptofeed,
        exchange=env.exchange,
        market=env.market,
        ws_url=ws_url,
        rest_url=None,
        cafile=Path(cafile) if cafile else None,
        symbols=[env.symbol],
        mode="postgres" if client.stage == "postgres" else "noop",
        pg=pg,
        overflow=client.overflow,  # type: ignore[arg-type]
        workdir=where,
        report_interval=0.1,
    )


class ApiPoller:
    """Polls `/collectors/trades` and records, per newly visible trade, now − exchange time."""

    def __init__(self, base: str, symbol: str) -> None:
        self.base = base
        self.symbol = symbol
        self.samples: list[float] = []
        self._seen_ts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        params: dict[str, Any] = {"exchange": "bybit", "symbol": self.symbol, "limit": 1000}
        with httpx.Client(base_url=self.base, timeout=2.0) as http:
            while not self._stop.wait(API_POLL_S):
                try:
                    if self._seen_ts:
                        params["since"] = self._seen_ts + 1000  # the API's times are milliseconds
                    answer = http.get("/collectors/trades", params=params)
                    now_us = time.time() * 1e6
                    if answer.status_code != 200:
                        continue
                    trades = answer.json().get("trades", [])
                except (httpx.HTTPError, ValueError):
                    continue
                for trade in trades:
                    ts = int(datetime.fromisoformat(trade["ts"]).timestamp() * 1e6)  # ms precision
                    self.samples.append(now_us - ts)
                    self._seen_ts = max(self._seen_ts, ts)


def run_case(
    env: Env,
    client: Client,
    *,
    frames: int,
    rate: float,
    tls: bool,
    name: str,
    api_latency: bool = False,
) -> CaseResult:
    where = env.fresh_dir(name)
    tls_dir = where if tls else None
    blaster = Blaster.start(frames, rate, tls_dir, env.symbol, env.mix)
    proc = None
    poller: ApiPoller | None = None
    try:
        proc = _client_process(env, client, blaster, tls_dir, where)
        lines = JsonLines(proc)
        ready = lines.wait_event("ready", READY_TIMEOUT_S)
        if ready is None:
            raise RuntimeError(f"{client.label}: not ready within {READY_TIMEOUT_S:.0f} s ({where})")
        if api_latency and ready.get("http"):
            poller = ApiPoller(ready["http"], _daemon_symbol(env))
            poller.start()
        cpu0 = float(ready["cpu"]) if "cpu" in ready else proc_cpu_s(proc.pid)
        t0 = time.time()
        blaster.go()
        series: list[tuple[float, int, int]] = []
        last_change = t0
        last_trades = -1
        done_at = t0
        cpu_done = cpu0
        rss_max = 0
        while True:
            time.sleep(SAMPLE_S)
            now = time.time()
            if proc.poll() is not None:
                break
            latest = lines.latest
            delivered = _delivered(client, latest)
            rss = proc_rss(proc.pid)
            rss_max = max(rss_max, rss)
            series.append((round(now - t0, 3), delivered, rss))
            if delivered != last_trades:
                last_trades = delivered
                last_change = now
                done_at = now
                # The client's own process_time() in the line (ns resolution) beats /proc's 10 ms ticks.
                cpu_done = float(latest["cpu"]) if "cpu" in latest else proc_cpu_s(proc.pid)
            if delivered >= frames or now - last_change > IDLE_TIMEOUT_S:
                break
        rss_end = proc_rss(proc.pid) if proc.poll() is None else 0
        if poller is not None:
            poller.stop()
        _stop(proc)
        final = lines.wait_event("final", 30) or {}
        delivered = max(last_trades, 0)
        if client.system == "cryptofeed" and client.stage == "postgres" and final.get("rows") is not None:
            delivered = int(final["rows"])  # what its backend committed before it stopped
        commit = final.get("commit_latency_us")
        # Per committed chunk: (seconds since the start, the chunk's worst latency in ms).
        points = [(round(at - t0, 3), worst / 1000) for at, worst in final.get("commit_chunks", [])]
        return CaseResult(
            name=name,
            client=client.label,
            tls=tls,
            rate=rate,
            frames=frames,
            trades=delivered,
            seconds=max(done_at - t0, 1e-9),
            cpu_s=cpu_done - cpu0,
            loss=max(0, frames - delivered),
            rss_max=rss_max,
            rss_end=rss_end,
            series=series,
            commit_latency=latency_summary(commit) if commit else None,
            api_latency=latency_summary(poller.samples) if poller is not None else None,
            commit_points=points,
            errors=lines.errors,
            final=final,
            sent=(blaster.lines.wait_event("sent", 5) or {}) if blaster.lines is not None else {},
        )
    finally:
        if poller is not None:
            poller.stop()
        if proc is not None:
            _stop(proc, 5)
        blaster.stop()


def _delivered(client: Client, latest: dict[str, Any]) -> int:
    if client.system == "cryptofeed" and client.stage == "postgres" and latest.get("written") is not None:
        return int(latest["written"])
    return int(latest.get("trades", 0))


def _daemon_symbol(env: Env) -> str:
    from marketflow.bench.worker import venue_for

    return venue_for(env.exchange, env.market, env.symbol).symbol


# -- the plan -----------------------------------------------------------------------------------------------


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


# -- the soak ------------------------------------------------------------------------------------------------


def soak(env: Env, minutes: float, symbols: int, log: Callable[[str], None]) -> dict[str, Any]:
    """`marketflow run` for `minutes` on the simulator: `symbols` linear symbols, every channel (trades,
    depth-200 books, tickers, derivatives, liquidations); RSS every 5 s. Memory must be flat: the report
    gives start, max, end and the slope."""
    where = env.fresh_dir("soak")
    names = [f"S{i:03d}USDT" for i in range(symbols)]
    sim = subprocess.Popen(
        [sys.executable, "-m", "marketflow", "sim", "--port", "0", "--rate", "20", "--book-rate", "10"]
        + ["--symbols", ",".join(names), "--trade-while-unsubscribed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sim.stdout is not None
    urls: dict[str, str] = {}
    for line in sim.stdout:
        parts = line.split()
        if parts[:1] == ["bybit"]:
            urls[parts[1]] = parts[2]
        if parts[:1] == ["http"]:
            break
    symbols_toml = ", ".join(f'"{n[:-4]}-USDT-PERP"' for n in names)
    config = where / "soak.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{where}"\nlog_format = "json"\n\n[http]\nlisten = "127.0.0.1:0"\n\n'
        f'[storage]\nurl = "sqlite:///{where}/soak.db"\n\n'
        f'[[feeds]]\nexchange = "bybit"\nmarket = "linear"\nsymbols = [{symbols_toml}]\n'
        f'channels = ["trades", "book", "ticker", "derivatives", "liquidations"]\n'
        f'book_depth = 200\nws_url = "{urls["linear"]}"\n'
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "marketflow", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(where / "run.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
    )
    samples: list[tuple[float, int]] = []
    t0 = time.time()
    end = t0 + minutes * 60
    try:
        with Progress(total=int(minutes * 60), label="soak") as progress:
            while time.time() < end and run.poll() is None:
                time.sleep(5)
                samples.append((round(time.time() - t0, 1), proc_rss(run.pid)))
                progress.advance(5)
    finally:
        _stop(run)
        sim.kill()
        sim.wait()
    if not samples:
        raise RuntimeError(f"the soak daemon exited at once: see {where / 'run.log'}")
    tail = samples[len(samples) // 3 :]
    slope = 0.0
    if len(tail) >= 2:
        xs = [t for t, _ in tail]
        ys = [r / 2**20 for _, r in tail]
        slope = statistics.linear_regression(xs, ys).slope * 3600  # MB per hour
    return {
        "minutes": minutes,
        "symbols": symbols,
        "book_depth": 200,
        "rss_start_mb": round(samples[0][1] / 2**20, 1),
        "rss_max_mb": round(max(r for _, r in samples) / 2**20, 1),
        "rss_end_mb": round(samples[-1][1] / 2**20, 1),
        "rss_slope_mb_per_h_after_first_third": round(slope, 2),
        "series": samples,
    }


# -- entry ---------------------------------------------------------------------------------------------------


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
