"""The command line as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from marketflow.demo import demo_simulator
from marketflow.sim import SimConfig, SimServer
from tests.conftest import stored_rows, wait_for

PY = sys.executable


async def decoded(client: httpx.AsyncClient, connection: str) -> float:
    """The daemon's count of trades decoded from `connection`, from its /metrics."""
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "marketflow_decoder_trades_total" and sample.labels["connection"] == connection:
                return float(sample.value)
    return 0.0


def marketflow(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MARKETFLOW_CONFIG": "", "MARKETFLOW_STORAGE_URL": ""}
    return subprocess.run(
        [PY, "-m", "marketflow", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_check_config_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(
        '[daemon]\nlog_level = "info"\n\n[[feeds]]\nexchange = "bybit"\n'
        'market = "spot"\nsymbls = ["BTCUSDT"]\n'
    )
    result = marketflow("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}:7: feeds[0].symbls: unknown key, did you mean 'symbols'?" in result.stderr
    assert f"{config}:4: feeds[0].symbols: required key is missing" in result.stderr


def test_check_config_accepts_the_shipped_file(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "configs" / "marketflow.toml"
    result = marketflow("check-config", str(shipped), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert marketflow("frobnicate", cwd=tmp_path).returncode == 2
    assert marketflow("run", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path).returncode == 2


def test_demo_runs_offline_and_leaves_trades(tmp_path: Path) -> None:
    result = marketflow("demo", "--duration", "4", "--rate", "50", cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "ws://127.0.0.1:" in result.stdout
    db = tmp_path / "var" / "demo.db"
    conn = sqlite3.connect(db)
    try:
        count, symbols, exchanges = conn.execute(
            "SELECT count(*), count(DISTINCT symbol), count(DISTINCT exchange) FROM trades"
        ).fetchone()
    finally:
        conn.close()
    # BTC/ETH spot and linear perpetuals on every venue; OKX adds inverse perpetuals and futures; Coinbase
    # and Kraken list BTC-USD and ETH-USD.
    assert count > 0 and symbols == 10 and exchanges == 5
    assert f"{count} trades stored in" in result.stdout


def test_the_demo_simulator_keeps_no_copy_of_what_it_sent() -> None:
    # A demo runs for days: the simulator's record of delivered frames would grow without bound.
    sim = demo_simulator(rate=50, seed=3)
    with pytest.raises(RuntimeError, match="record_delivered is False"):
        sim.delivered_trades()


async def test_run_stops_cleanly_on_sigterm_with_every_trade_committed(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=21, rate=100, max_frames=200))
    db = tmp_path / "mf.db"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = tmp_path / "marketflow.toml"
            config.write_text(
                f'[http]\nlisten = "127.0.0.1:0"\n[daemon]\nstate_dir = "{tmp_path}"\nlog_format = "json"\n'
                f'[storage]\nurl = "sqlite:///{db}"\nflush_interval_s = 5\n'
                f'[[feeds]]\nexchange = "bybit"\nmarket = "linear"\nsymbols = ["BTCUSDT"]\n'
                f'ws_url = "{sim.bybit_ws_url("linear")}"\n'
            )
            env = {**os.environ, "MARKETFLOW_STORAGE_URL": ""}
            proc = await trio.lowlevel.open_process(
                [PY, "-m", "marketflow", "run", "--config", str(config)],
                cwd=tmp_path,
                env=env,
                stderr=subprocess.PIPE,
            )
            assert proc.stderr is not None
            logs = ""
            while (listening := re.search(r'"msg": "HTTP API listening", "url": "([^"]+)"', logs)) is None:
                logs += (await proc.stderr.receive_some(65536)).decode()
            # The flush interval is long, so rows still pending when SIGTERM lands must be flushed by it.
            # Trades the daemon has not read yet are not: SIGTERM once it decoded every one delivered.
            await wait_for(lambda: sim.statistics().frames_sent >= 200, 0.05)
            delivered = len(sim.delivered_trades())
            async with httpx.AsyncClient(base_url=listening[1], timeout=10) as client:
                while await decoded(client, "bybit-linear") < delivered:  # noqa: ASYNC110 - a counter
                    await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            logs += (await proc.stderr.receive_some(1 << 20)).decode()
            nursery.cancel_scope.cancel()
    assert code == 0, logs
    assert '"msg": "stopping", "signal": "SIGTERM"' in logs
    assert len(stored_rows(db)) == len(sim.delivered_trades()) > 0
