"""`marketflow bench --soak`: the daemon on the simulator for minutes, RSS sampled; memory must stay flat."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from marketflow.bench.case import Env
from marketflow.bench.measure import proc_rss, stop_process
from marketflow.progress import Progress


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
        stop_process(run)
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
