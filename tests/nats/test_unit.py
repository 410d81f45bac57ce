"""The systemd template unit for roles (`configs/marketflow@.service`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).parent.parent.parent / "configs" / "marketflow@.service"


def test_the_role_template_runs_one_config_and_state_dir_per_role(tmp_path: Path) -> None:
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["ExecStart"].endswith("run --config /etc/marketflow/%i.toml")
    assert settings["StateDirectory"] == "marketflow/%i"
    assert (settings["Type"], settings["DynamicUser"], settings["ProtectSystem"]) == (
        "notify",
        "yes",
        "strict",
    )
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # an instance of the template must pass systemd's own checker
        instance = tmp_path / "marketflow@collect.service"
        instance.write_text(text)
        result = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True)
        assert [line for line in result.stderr.splitlines() if "is not executable" not in line] == []
