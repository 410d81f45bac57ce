"""The container image's recipe: multi-stage, unprivileged, state in a volume, a health check on /health,
and a configuration the daemon accepts. (Built and run with podman by hand; see the README.)"""

from __future__ import annotations

import re
from pathlib import Path

from marketflow.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_multi_stage_and_runs_unprivileged() -> None:
    steps = instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build")
    assert any(w == "COPY" and r.startswith("--from=build") for w, r in steps)
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # The runtime stage installs no compiler or build tool: only the venv is copied over.
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1] :]
    assert not any(w == "RUN" and "pip install" in r for w, r in runtime)


def test_state_in_a_volume_and_health_checked() -> None:
    steps = dict(instructions())
    assert "/var/lib/marketflow" in steps["VOLUME"]
    assert "/health" in steps["HEALTHCHECK"] and "--interval" in steps["HEALTHCHECK"]
    assert steps["STOPSIGNAL"] == "SIGTERM"
    assert steps["ENTRYPOINT"] == '["marketflow"]' and steps["CMD"] == '["run"]'


def test_the_shipped_container_config_is_valid_and_uses_the_volume() -> None:
    config = load_config(ROOT / "configs" / "container.toml")
    assert config.daemon.state_dir == "/var/lib/marketflow"
    assert config.storage.url.startswith("sqlite:////var/lib/marketflow/")
    assert config.http.listen == "0.0.0.0:8000" and config.http.public_reads is False
    assert config.daemon.log_format == "json"
    assert "COPY configs/container.toml /etc/marketflow/marketflow.toml" in CONTAINERFILE
