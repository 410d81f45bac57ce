"""What a rejected configuration reports: `PATH:LINE: key.path: reason`, all problems at once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import attrs

_Path = tuple[str | int, ...]


@attrs.frozen
class ConfigIssue:
    path: str
    line: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """A configuration was rejected; `issues` holds every problem found, in file order."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def format_key(path: tuple[str | int, ...]) -> str:
    """`("feeds", 1, "symbols", 0)` -> `feeds[1].symbols[0]`; keys other than `[A-Za-z0-9_]+` are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_]+", part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out
