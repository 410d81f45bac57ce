"""Reading a configuration: TOML text or a file -> checked `Config`, or a `ConfigError` naming problems."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import attrs

from marketflow.config.checker import _Checker
from marketflow.config.issues import ConfigError, ConfigIssue
from marketflow.config.locator import _KeyLocator
from marketflow.config.sections import CONFIG_PATH_ENV, DEFAULT_CONFIG_FILE, Config


def parse_config(text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate TOML `text`; raise `ConfigError` listing every problem.

    `source` names the text in messages (a file path) and is kept as `Config.source`. Sections and keys
    that are left out take their defaults; `$MARKETFLOW_STORAGE_URL` in `env` (default `os.environ`)
    overrides `storage.url`.
    """
    try:
        doc = tomllib.loads(text, parse_float=Decimal)  # floats stay exact as written
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_issue(source, text, exc)]) from None
    checker = _Checker(source, _KeyLocator(text))
    config = checker.check(doc, os.environ if env is None else env)
    if config is None:
        raise ConfigError(sorted(checker.issues, key=lambda issue: (issue.line is None, issue.line or 0)))
    return attrs.evolve(config, source=source, digest=config_digest(text, None))


def config_digest(text: str, overlay: str | None) -> str:
    """A fingerprint of a configuration file's text and of its symbols overlay's (None: no overlay)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    if overlay is not None:
        digest.update(b"\0overlay\0" + overlay.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at `path`, then apply the symbols overlay under its `state_dir`
    (`marketflow.config.overlay`); an unreadable file is a `ConfigError` naming it."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = f"cannot read the configuration file: {exc.strerror or exc}"
        raise ConfigError([ConfigIssue(name, None, "<file>", reason)]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(name, line, "<toml>", "the file is not valid UTF-8")]) from None
    from marketflow.config.overlay import apply_overlay_file  # it builds on this module

    return apply_overlay_file(parse_config(text, source=name, env=env), text)


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> str | None:
    """`--config`, else `$MARKETFLOW_CONFIG`, else `./marketflow.toml` if it exists, else None (defaults)."""
    if cli_path is not None:
        return cli_path
    if env.get(CONFIG_PATH_ENV):
        return env[CONFIG_PATH_ENV]
    return DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """The built-in configuration (Bybit spot + linear, BTC and ETH), honouring `$MARKETFLOW_STORAGE_URL`."""
    return attrs.evolve(parse_config("", source="<built-in defaults>", env=env), source=None)


def _syntax_issue(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigIssue:
    message = str(exc)
    if match := re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL):
        reason = f"{match[1]} (column {match[3]})"
        return ConfigIssue(source, int(match[2]), "<toml>", f"invalid TOML: {reason}")
    if match := re.fullmatch(r"(.*) \(at end of document\)", message, re.DOTALL):
        line = max(1, len(text.splitlines()))
        return ConfigIssue(source, line, "<toml>", f"invalid TOML: {match[1]} at the end of the file")
    return ConfigIssue(source, None, "<toml>", f"invalid TOML: {message}")
