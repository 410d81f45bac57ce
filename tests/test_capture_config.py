"""The `[capture]` section: defaults, the directory under state_dir, and errors as PATH:LINE: key: reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketflow.capture import Capture
from marketflow.config import CaptureConfig, ConfigError, parse_config


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="m.toml", env={})
    return [str(issue) for issue in caught.value.issues]


def test_defaults_keep_capture_off_under_state_dir() -> None:
    config = parse_config('[daemon]\nstate_dir = "/srv/mf"\n', env={})
    assert config.capture == CaptureConfig() and config.capture.enabled is False
    assert Capture(config.capture, config.daemon.state_dir).directory == Path("/srv/mf/capture")
    explicit = parse_config('[capture]\ndir = "/data/cap"\n', env={}).capture
    assert Capture(explicit, "/srv/mf").directory == Path("/data/cap")


def test_every_key_is_read() -> None:
    config = parse_config(
        '[capture]\nenabled = true\ndir = "/data/cap"\nrotate_mb = 0.5\nrotate_s = 600\n'
        "max_total_mb = 1024\nlevel = 9\n",
        env={},
    )
    assert config.capture == CaptureConfig(
        enabled=True, dir="/data/cap", rotate_mb=0.5, rotate_s=600.0, max_total_mb=1024.0, level=9
    )


def test_bad_values_are_reported_with_file_line_and_key() -> None:
    text = (
        "[capture]\n"
        'enabled = "yes"\n'
        "rotate_mb = 0\n"
        "rotate_s = -1\n"
        "max_total_mb = -5\n"
        "level = 23\n"
        'dir = ""\n'
        "rotat_s = 5\n"
    )
    assert issues(text) == [
        'm.toml:2: capture.enabled: must be true or false, got string "yes"',
        "m.toml:3: capture.rotate_mb: must be a number of megabytes > 0, got integer 0",
        "m.toml:4: capture.rotate_s: must be a number of seconds > 0, got integer -1",
        "m.toml:5: capture.max_total_mb: must be a number of megabytes >= 0 (0 keeps all), got integer -5",
        "m.toml:6: capture.level: must be a zstd compression level, an integer 1-22, got integer 23",
        'm.toml:7: capture.dir: must be a non-empty string, got string ""',
        "m.toml:8: capture.rotat_s: unknown key, did you mean 'rotate_s'?",
    ]


def test_capture_must_be_a_table() -> None:
    assert issues("capture = 1\n") == ["m.toml:1: capture: must be a table ([capture]), got integer 1"]


def test_the_shipped_file_documents_the_section() -> None:
    shipped = Path(__file__).parent.parent / "configs" / "marketflow.toml"
    text = shipped.read_text()
    assert "[capture]" in text
    assert parse_config(text, env={}).capture.enabled is False
