"""Checks of single values: each takes what TOML gave and returns the typed value, or raises `_Rejected`
with a reason that says what was expected and what was written. Also the per-section tables of checks."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from datetime import date, time
from decimal import Decimal, InvalidOperation
from typing import Final

from marketflow.config.sections import LOG_FORMATS, LOG_LEVELS, MAX_MESSAGE_MB_LIMIT, ROLES
from marketflow.exchanges import VENUES, example_feed_name

_FLOAT_DECIMAL: Final = 'write decimals as strings, e.g. "10", so they stay exact'
_FEED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")
_INTERVAL_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Rejected(Exception):
    """A value failed its check; `reason` is None when the check already reported (per element)."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, Decimal):
        return f"float {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, date | time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__


def _integer(minimum: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        raise _Rejected(f"must be an integer >= {minimum}, got {_describe(value)}")

    return check


def _message_mb(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_MESSAGE_MB_LIMIT:
        return value
    raise _Rejected(
        f"must be an integer number of MiB from 1 to {MAX_MESSAGE_MB_LIMIT}, got {_describe(value)}"
    )


def _number(value: object, what: str, *, above: float | None = None, least: float | None = None) -> float:
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        number = float(value)
        if (
            Decimal(value).is_finite()
            and (above is None or number > above)
            and (least is None or number >= least)
        ):
            return number
    raise _Rejected(f"must be {what}, got {_describe(value)}")


def _seconds(value: object) -> float:
    return _number(value, "a number of seconds > 0", above=0.0)


def _read_coalesce(value: object) -> float:
    number = _number(value, "a number of milliseconds from 0 to 50", least=0.0)
    if number > 50:
        raise _Rejected(f"must be a number of milliseconds from 0 to 50, got {_describe(value)}")
    return number


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _Rejected(f"must be true or false, got {_describe(value)}")


def _string(value: object) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Rejected(f"must be a non-empty string, got {_describe(value)}")


def _choice(*options: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise _Rejected(f"must be one of {', '.join(options)}, got {_describe(value)}")

    return check


def _url(*schemes: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and any(value.startswith(s) and len(value) > len(s) for s in schemes):
            return value
        allowed = " or ".join(f"{s}HOST..." for s in schemes)
        raise _Rejected(f"must be a URL starting {allowed}, got {_describe(value)}")

    return check


def _listen(value: object) -> str:
    expected = 'expected "host:port" with a port 0-65535 (IPv6 as "[::1]:8000")'
    if not isinstance(value, str):
        raise _Rejected(f"{expected}, got {_describe(value)}")
    host, colon, port = value.rpartition(":")
    problem = None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            problem = f"{host[1:-1]!r} is not an IPv6 address"
    elif not colon or not host:
        problem = "no host" if colon else "no port"
    elif re.search(r"[\s\[\]:/]", host):
        problem = f"bad host {host!r} (write IPv6 addresses in brackets)"
    if problem is None and not (port.isascii() and port.isdigit()):
        problem = f"bad port {port!r}"
    elif problem is None and int(port) > 65535:
        problem = f"port {int(port)} is out of range"
    if problem is not None:
        raise _Rejected(f"{problem}; {expected}, got {_describe(value)}")
    return value


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _host_names(value: object) -> tuple[str, ...]:
    expected = 'must be an array of host names or IP addresses, e.g. ["marketflow.example.com"]'
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Rejected(f"{expected}, got {_describe(value)}")
    names: list[str] = []
    for item in value:
        name = item.strip().lower().removesuffix(".")
        bare = name.removeprefix("[").removesuffix("]")
        with contextlib.suppress(ValueError):
            names.append(str(ipaddress.ip_address(bare)))
            continue
        if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
            raise _Rejected(f"{expected} (no scheme, port or path), got {_describe(item)}")
        names.append(name)
    return tuple(names)


def _storage_url(value: object) -> str:
    allowed = "sqlite:///PATH, sqlite:///:memory: or postgresql://USER@HOST/DB (postgresql+asyncpg:// too)"
    if not isinstance(value, str):
        raise _Rejected(f"must be a database URL ({allowed}), got {_describe(value)}")
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if value.startswith(("postgresql://", "postgresql+asyncpg://")):
        return value
    if value.startswith("sqlite:"):
        raise _Rejected(
            f"a SQLite URL is sqlite:/// and a path (sqlite:////abs/path.db when absolute); use {allowed}"
        )
    # Show the scheme only: the rest of a database URL may hold a password.
    scheme = value.partition("://")[0]
    problem = f"unsupported database URL scheme {scheme!r}" if "://" in value else "not a database URL"
    raise _Rejected(f"{problem}; use {allowed}")


def _decimal(value: object, *, floats: bool) -> Decimal:
    if isinstance(value, Decimal):  # a TOML float, read exactly from its text
        if not floats:
            raise _Rejected(_FLOAT_DECIMAL)
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = Decimal("NaN")
    else:
        number = Decimal("NaN")
    if number.is_finite() and number > 0:
        return number
    raise _Rejected(f'must be a decimal > 0 written as a string, e.g. "10", got {_describe(value)}')


def _interval_seconds(value: object) -> int:
    match = _INTERVAL.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _Rejected(
            f'must be a number and a unit s|m|h|d, e.g. "1s", "15m", "1h", "1d", got {_describe(value)}'
        )
    return int(match[1]) * _INTERVAL_SECONDS[match[2]]


_Check = Callable[[object], object]

_REQUIRED_FEED_KEYS: Final = {
    "exchange": f'"{next(iter(VENUES))}"',
    "market": '"spot"',
    "symbols": '["BTCUSDT"]',
}

_DAEMON: Final[Mapping[str, _Check]] = {
    "log_level": _choice(*LOG_LEVELS),
    "log_format": _choice(*LOG_FORMATS),
    "state_dir": _string,
    "shutdown_timeout_s": _seconds,
    "channel_capacity": _integer(1),
    "read_coalesce_ms": _read_coalesce,
    "roles": lambda value: _roles(value),
}
_HTTP: Final[Mapping[str, _Check]] = {
    "listen": _listen,
    "public_reads": _boolean,
    "trades_ring": _integer(1),
    "allowed_hosts": _host_names,
    "api_docs": _boolean,
    "max_connections": _integer(1),
    "read_timeout_s": _seconds,
    "idle_timeout_s": _seconds,
    "query_timeout_s": _seconds,
    "max_storage_queries": _integer(1),
}
_STORAGE: Final[Mapping[str, _Check]] = {
    "url": _storage_url,
    "batch_max": _integer(1),
    "flush_interval_s": _seconds,
    "buffer_max": _integer(0),
    "record_buffer_max": _integer(2),
    "retention_days": _integer(0),
    "store_quotes": _boolean,
}
_DERIVATIVES: Final[Mapping[str, _Check]] = {"sample_interval_s": _seconds}
_SUPERVISOR: Final[Mapping[str, _Check]] = {
    "backoff_initial_s": _seconds,
    "backoff_max_s": _seconds,
    "circuit_failures": _integer(1),
    "circuit_window_s": _seconds,
    "circuit_open_s": _seconds,
}
_BOOKS: Final[Mapping[str, _Check]] = {
    "snapshot_interval_s": _seconds,
    "snapshot_depth": _integer(1),
}
_CAPTURE: Final[Mapping[str, _Check]] = {
    "enabled": _boolean,
    "dir": _string,
    "rotate_mb": lambda value: _number(value, "a number of megabytes > 0", above=0.0),
    "rotate_s": _seconds,
    "max_total_mb": lambda value: _number(value, "a number of megabytes >= 0 (0 keeps all)", least=0.0),
    "level": lambda value: _zstd_level(value),
}
_NATS: Final[Mapping[str, _Check]] = {
    "servers": lambda value: _nats_servers(value),
    "subject_prefix": lambda value: _subject_prefix(value),
    "stream_replicas": lambda value: _replicas(value),
    "max_age": _interval_seconds,
    "flush_interval_s": _seconds,
    "book_interval_s": _seconds,
    "ack_wait_s": _seconds,
}
_ARCHIVE: Final[Mapping[str, _Check]] = {"after_days": _integer(0), "dir": _string}
_TOP_KEYS: Final = (
    "daemon",
    "http",
    "storage",
    "supervisor",
    "books",
    "feeds",
    "analytics",
    "capture",
    "nats",
    "derivatives",
    "archive",
)


def _roles(value: object) -> tuple[str, ...]:
    expected = f'must be a non-empty array of roles ({", ".join(ROLES)}), e.g. ["collect"]'
    if not isinstance(value, list) or not value:
        raise _Rejected(f"{expected}, got {_describe(value)}")
    for item in value:
        if item not in ROLES:
            raise _Rejected(f"{expected}; {_describe(item)} is not a role")
        if value.count(item) > 1:
            raise _Rejected(f"{expected}; {item!r} is given twice")
    return tuple(role for role in ROLES if role in value)  # one order, whatever the file's


def _nats_servers(value: object) -> tuple[str, ...]:
    expected = 'must be an array of NATS URLs, e.g. ["nats://10.0.0.1:4222"] (empty: no NATS)'
    if not isinstance(value, list):
        raise _Rejected(f"{expected}, got {_describe(value)}")
    for item in value:
        if not (isinstance(item, str) and re.fullmatch(r"(nats|tls)://[^\s/]+(:[0-9]{1,5})?", item)):
            raise _Rejected(f"{expected}; {_describe(item)} is not a nats:// or tls:// URL")
    return tuple(value)


def _subject_prefix(value: object) -> str:
    if isinstance(value, str) and _SUBJECT_PREFIX.fullmatch(value):
        return value
    raise _Rejected(
        "must be NATS subject tokens of letters, digits, _ and - joined by dots (no wildcards), "
        f'e.g. "marketflow" or "prod.marketflow", got {_describe(value)}'
    )


def _replicas(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return value
    raise _Rejected(f"must be an integer from 1 to 5 (3 on a 3-node cluster), got {_describe(value)}")


def _feed_name(value: object) -> str:
    if isinstance(value, str) and _FEED_NAME.fullmatch(value):
        return value
    example = f"{example_feed_name()}-2"
    raise _Rejected(f"must match [a-z0-9][a-z0-9_-]* (e.g. {example}), got {_describe(value)}")


def _zstd_level(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 22:
        return value
    raise _Rejected(f"must be a zstd compression level, an integer 1-22, got {_describe(value)}")


def _value_area(value: object) -> Decimal:
    # A ratio, not money: a TOML float such as 0.70 is accepted (SPEC §3 writes it so); parse_float keeps
    # it exact anyway.
    try:
        number = _decimal(value, floats=True)
    except _Rejected:
        number = Decimal(0)
    if 0 < number <= 1:
        return number
    raise _Rejected(f'must be a fraction > 0 and <= 1, e.g. 0.70 or "0.70", got {_describe(value)}')
