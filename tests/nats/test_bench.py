"""`marketflow bench --nats` end to end on a few trades: both cases run, store every trade, and report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trio


async def test_bench_nats_reports_both_paths_without_loss(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "marketflow", "bench", "--nats", "3000", "--out", str(tmp_path)]
    with trio.fail_after(180):
        done = await trio.run_process(command, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out[-3000:]
    cases = re.findall(r"^(single-process|collect-jetstream-store) .* loss (\d+) ", out, re.MULTILINE)
    assert cases == [("single-process", "0"), ("collect-jetstream-store", "0")], out[-3000:]
    assert "through NATS / single process:" in (tmp_path / "bench-nats.txt").read_text()
