"""`marketflow demo --nats`: a local NATS server and the three roles as processes; trades reach storage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trio


async def test_demo_nats_runs_the_roles_as_processes_and_stores_trades(tmp_path: Path) -> None:
    config = tmp_path / "demo.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n[http]\nlisten = "127.0.0.1:0"\n')
    command = [
        sys.executable,
        "-m",
        "marketflow",
        "demo",
        "--nats",
        "--duration",
        "6",
        "--config",
        str(config),
    ]
    with trio.fail_after(120):
        done = await trio.run_process(command, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out[-3000:]
    for role in ("store", "serve", "collect"):
        assert (tmp_path / "var" / "nats-demo" / f"{role}.toml").exists()
    stored = re.search(r"marketflow demo --nats: (\d+) trades stored", out)
    assert stored is not None and int(stored[1]) > 0, out[-3000:]
