"""A daemon that does not archive or use NATS does not carry their libraries (~65 MB resident)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("pyarrow", "duckdb", "numpy", "nats")


def test_a_plain_daemon_does_not_load_the_archive_or_nats_libraries(tmp_path: Path) -> None:
    config = tmp_path / "marketflow.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[storage]\nurl = "sqlite:///{tmp_path}/mf.db"\n')
    code = (
        "import sys\n"
        "from marketflow import cli\n"
        "from marketflow.config import load_config\n"
        "from marketflow.daemon import Daemon\n"
        "cli.build_parser()\n"
        f"Daemon(load_config({str(config)!r}, env={{}}))\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == []
