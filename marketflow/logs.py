"""Structured logging: console or JSON lines, repeated messages rate-limited, secrets redacted.

Code logs a constant message and puts the variable parts in `extra={...}`; the formatters print those as
fields. The same constant message from the same logger is allowed `burst` times per `interval_s`; after
that it is counted, and the next one let through says how many were suppressed. A record whose extra
holds `_rate_key` (say, the failing child's name) is counted apart from the same message with another key.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any, TextIO

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}

# user:password@ in URLs, and key=... / password=... style secrets.
_URL_SECRET = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@")
_KV_SECRET = re.compile(r"(?i)\b(password|passwd|secret|api[_-]?key|token)=([^\s&]+)")


def redact(text: str) -> str:
    """Hide passwords in URLs (`postgresql://u:***@h/db`) and `password=`/`api_key=` values."""
    text = _URL_SECRET.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KV_SECRET.sub(lambda m: f"{m[1]}=***", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            payload[key] = _plain(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, ensure_ascii=False))


class ConsoleFormatter(logging.Formatter):
    """`12:00:19.680 WARNING marketflow.feed  message  key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [f"{stamp} {record.levelname:<7} {record.name:<28} {record.getMessage()}"]
        for key, value in _fields(record).items():
            parts.append(f"{key}={_plain(value)!s}")
        line = "  ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class RateLimitFilter(logging.Filter):
    """Lets the same (logger, message) through `burst` times per `interval_s`, counts the rest."""

    def __init__(self, burst: int = 5, interval_s: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg), str(getattr(record, "_rate_key", "")))
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval_s:
                suppressed = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
                if suppressed:
                    record.suppressed = suppressed
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False


def configure_logging(level: str = "info", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Install marketflow's handler on the root logger (idempotent: replaces an earlier one)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_marketflow", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RateLimitFilter())
    handler._marketflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("hypercorn", "websockets", "sqlalchemy", "trio-websocket", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
