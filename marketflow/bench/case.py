"""One `marketflow bench` case: the blaster, the client under test in its own process, and the sampling
loop that ends when the client has everything (or stalls)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx

from marketflow.bench.measure import JsonLines, latency_summary, proc_cpu_s, proc_rss, stop_process

SAMPLE_S = 0.1
API_POLL_S = 0.01
IDLE_TIMEOUT_S = 8.0
"""A case ends when the client has everything, or has delivered nothing new for this long."""
READY_TIMEOUT_S = 90.0


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
        stop_process(proc)
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
            stop_process(proc, 5)
        blaster.stop()


def _delivered(client: Client, latest: dict[str, Any]) -> int:
    if client.system == "cryptofeed" and client.stage == "postgres" and latest.get("written") is not None:
        return int(latest["written"])
    return int(latest.get("trades", 0))


def _daemon_symbol(env: Env) -> str:
    from marketflow.bench.worker import venue_for

    return venue_for(env.exchange, env.market, env.symbol).symbol
