"""TOML configuration -> typed, validated `Config` (SPEC §3).

Validation lives here, at the edge: the rest of the daemon only ever sees the frozen attrs classes below.
A file is checked completely before anything is built, and every problem is reported at once as
`PATH:LINE: key.path: reason`. Values are converted while they are checked and the classes are then built
with plain attrs constructors (no cattrs: the checks already produce the exact typed values).

The stdlib parser gives no positions, so `_KeyLocator` re-reads the (already valid) text to find the line
on which each key, array element and table header is written.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import hashlib
import ipaddress
import json
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from datetime import date, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import attrs

from marketflow.exchanges import VENUES, example_feed_name
from marketflow.exchanges.base import CHANNELS as VENUE_CHANNELS
from marketflow.exchanges.base import Market
from marketflow.model import SymbolError, normalize_symbol

STORAGE_URL_ENV: Final = "MARKETFLOW_STORAGE_URL"
CONFIG_PATH_ENV: Final = "MARKETFLOW_CONFIG"
DEFAULT_CONFIG_FILE: Final = "marketflow.toml"

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("console", "json")
ROLES: Final = ("collect", "store", "serve")
CHANNELS: Final = VENUE_CHANNELS
_FLOAT_DECIMAL: Final = 'write decimals as strings, e.g. "10", so they stay exact'
_FEED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")
_INTERVAL_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SYMBOL = re.compile(r"[A-Z0-9]+-[A-Z0-9]+(-PERP)?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\r\n]+")  # numbers, booleans, dates: up to the next delimiter


def _normalized_on_some_venue(symbol: str) -> bool:
    """True when some market of some venue writes `symbol` normalized exactly so."""
    for venue in VENUES.values():
        for market in venue.markets:
            try:
                if venue.normalize_symbol(market, symbol) == symbol:
                    return True
            except SymbolError:
                continue
    return False


def _default(cls: type, name: str) -> Any:
    return attrs.fields_dict(cls)[name].default


def _frozen_mapping(value: Mapping[str, Decimal]) -> Mapping[str, Decimal]:
    return MappingProxyType(dict(value))


@attrs.frozen
class DaemonConfig:
    log_level: str = "info"
    log_format: str = "console"
    state_dir: str = "./var"
    shutdown_timeout_s: float = 10.0
    # How many batches a bounded channel between two actors holds before the sender waits.
    channel_capacity: int = 256
    # After a small socket read, wait this long before the next one so frames arriving one by one are
    # handled a batch per wake-up (bounded latency for much less CPU per frame); 0 = off. At 20k frames/s
    # over wss, 10 ms took the whole daemon from ~11 to ~9.5 µs CPU per frame against 2 ms.
    read_coalesce_ms: float = 10.0
    # What this daemon does (SPEC §13): collect (feeds → NATS), store (NATS → database), serve (HTTP, MCP,
    # analytics over every symbol). Without [nats] servers it does all three, as one process.
    roles: tuple[str, ...] = ROLES


@attrs.frozen
class NatsConfig:
    """`[nats]` (SPEC §13): empty `servers` = no NATS, one process (the default)."""

    servers: tuple[str, ...] = ()
    subject_prefix: str = "marketflow"
    stream_replicas: int = 1
    max_age_s: int = 7 * 86400  # `max_age = "7d"`: JetStream retention of the trades stream
    # Longest a collected trade waits before its batch is published (the store and serve roles see it then).
    flush_interval_s: float = 0.05
    # Synced books are published (whole, as a snapshot) at most this often per symbol.
    book_interval_s: float = 0.25
    # A store daemon that took messages and died: JetStream hands them to another after this many seconds.
    ack_wait_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.servers)


@attrs.frozen
class HttpConfig:
    listen: str = "127.0.0.1:8000"
    public_reads: bool = False
    # Newest trades per market kept in memory for /collectors/trades (older ones come from storage).
    trades_ring: int = 1_000
    # Host names a loopback listener answers to besides loopback ones (a DNS-rebinding guard).
    allowed_hosts: tuple[str, ...] = ()
    # Serve /docs, /redocs and /scalar (they load scripts from a CDN); /openapi.json is always served.
    api_docs: bool = False
    # One client must not starve the others: open connections (more wait in the listen backlog), seconds a
    # connection may stay silent mid-request or idle between requests, and queries reading stored trades.
    max_connections: int = 512
    read_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0
    query_timeout_s: float = 10.0
    max_storage_queries: int = 4

    @property
    def host(self) -> str:
        """The host part of `listen`, without IPv6 brackets (`::1`)."""
        return self.listen.rpartition(":")[0].removeprefix("[").removesuffix("]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@attrs.frozen
class StorageConfig:
    url: str = "sqlite:///./var/marketflow.db"
    batch_max: int = 5000
    flush_interval_s: float = 0.25
    buffer_max: int = 1_000_000
    retention_days: int = 0
    # Every best bid/ask change into `quotes` (SPEC §12): many rows, so off unless asked for.
    store_quotes: bool = False


@attrs.frozen
class SupervisorConfig:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    circuit_failures: int = 10
    circuit_window_s: float = 300.0
    circuit_open_s: float = 60.0


@attrs.frozen
class BooksConfig:
    # Every synced book's top `snapshot_depth` levels are written to `book_snapshots` this often.
    snapshot_interval_s: float = 10.0
    snapshot_depth: int = 20


@attrs.frozen
class DerivativesConfig:
    # One `derivatives` row per symbol per this many seconds in which a field changed (SPEC §12).
    sample_interval_s: float = 1.0


@attrs.frozen
class CaptureConfig:
    """Raw frames as received, per connection, into rotating zstd JSON-lines files (`marketflow replay`)."""

    enabled: bool = False
    dir: str | None = None  # None: <daemon.state_dir>/capture
    rotate_mb: float = 64.0  # uncompressed megabytes per file
    rotate_s: float = 3600.0
    max_total_mb: float = 0.0  # compressed megabytes of all capture files kept; 0 keeps everything
    level: int = 3  # zstd compression level


MAX_MESSAGE_MB = 16
"""Default bound of one WebSocket message, in MiB: room for a multi-MB order-book snapshot."""
MAX_MESSAGE_MB_LIMIT = 256


@attrs.frozen
class ArchiveConfig:
    """Trades older than `after_days` whole days move into Parquet files under `dir` (0: never)."""

    after_days: int = 0
    dir: str | None = None  # None: <daemon.state_dir>/archive


@attrs.frozen
class FeedConfig:
    exchange: str
    market: str
    symbols: tuple[str, ...]  # normalized: BTC-USDT, or BTC-USDT-PERP on perpetual markets
    channels: tuple[str, ...] = ("trades", "book")
    book_depth: int = 50
    ws_url: str | None = None
    rest_url: str | None = None
    name: str = attrs.field(
        default=attrs.Factory(lambda self: f"{self.exchange}-{self.market}", takes_self=True)
    )
    stale_timeout_s: float = 30.0
    ping_interval_s: float = 20.0
    max_message_mb: int = MAX_MESSAGE_MB
    """The largest WebSocket message the feed accepts (a Coinbase level2 snapshot is several MB)."""

    @property
    def perpetual(self) -> bool:
        venue = VENUES.get(self.exchange)
        market = None if venue is None else venue.markets.get(self.market)
        return market is not None and market.perpetual


@attrs.frozen
class AnalyticsConfig:
    candle_intervals: tuple[str, ...] = ("1m", "5m", "1h")
    value_area: Decimal = Decimal("0.70")
    large_trade_notional: Decimal = Decimal("100000")
    # Left out of the hash: a mapping is not hashable, and equality still compares it.
    bin_size: Mapping[str, Decimal] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)
    # False: no live engine (no candles table rows); queries compute every range from stored trades.
    enabled: bool = True
    # Closed bars the live engine keeps per market and interval (with their footprint cells); older
    # ranges are computed from storage. The engine's memory grows with it.
    live_bars: int = 240


@attrs.frozen
class Config:
    daemon: DaemonConfig
    http: HttpConfig
    storage: StorageConfig
    supervisor: SupervisorConfig
    feeds: tuple[FeedConfig, ...]
    analytics: AnalyticsConfig
    source: str | None = None  # the file it was read from (parse_config: its `source` label)
    # What was read: `config_digest` of the file (and the symbols overlay); edits refuse to build on a
    # file that changed since (a person's unreloaded edit must not be applied behind their back). Not part
    # of equality: two configs that say the same are equal whatever their files' comments.
    digest: str | None = attrs.field(default=None, eq=False)
    books: BooksConfig = BooksConfig()
    capture: CaptureConfig = CaptureConfig()
    nats: NatsConfig = NatsConfig()
    derivatives: DerivativesConfig = DerivativesConfig()
    archive: ArchiveConfig = ArchiveConfig()


DEFAULT_FEEDS: Final = tuple(
    FeedConfig(venue.name, market.name, market.default_symbols, book_depth=market.default_book_depth)
    for venue in VENUES.values()
    for market in venue.markets.values()
    if market.default_symbols
)


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
    (`marketflow.config_overlay`); an unreadable file is a `ConfigError` naming it."""
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
    from marketflow.config_overlay import apply_overlay_file  # it builds on this module

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


def _syntax_issue(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigIssue:
    message = str(exc)
    if match := re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL):
        reason = f"{match[1]} (column {match[3]})"
        return ConfigIssue(source, int(match[2]), "<toml>", f"invalid TOML: {reason}")
    if match := re.fullmatch(r"(.*) \(at end of document\)", message, re.DOTALL):
        line = max(1, len(text.splitlines()))
        return ConfigIssue(source, line, "<toml>", f"invalid TOML: {match[1]} at the end of the file")
    return ConfigIssue(source, None, "<toml>", f"invalid TOML: {message}")


# ---------------------------------------------------------------------------------------------- checks

_Path = tuple[str | int, ...]


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


class _Checker:
    """Walks the parsed document, converting values and collecting every issue with its line."""

    def __init__(self, source: str, locator: _KeyLocator) -> None:
        self.source = source
        self.locator = locator
        self.issues: list[ConfigIssue] = []

    def report(self, path: _Path, reason: str, *, located: bool = True) -> None:
        line = self.locator.line_for(path) if located else None
        self.issues.append(ConfigIssue(self.source, line, format_key(path), reason))

    def unknown(self, path: _Path, known: Iterable[str]) -> None:
        known = list(known)
        key = str(path[-1])
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
        hint = f", did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"
        self.report(path, "unknown key" + hint)

    def table(self, value: object, path: _Path) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.report(path, f"must be a table ([{format_key(path)}]), got {_describe(value)}")
        return None

    def fields(self, table: Mapping[str, Any], path: _Path, checks: Mapping[str, _Check]) -> dict[str, Any]:
        """Check each key of `table`; return the converted values of those that passed."""
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in checks:
                self.unknown((*path, key), checks)
                continue
            try:
                out[key] = checks[key](value)
            except _Rejected as exc:
                if exc.reason is not None:
                    self.report((*path, key), exc.reason)
        return out

    def section(self, doc: Mapping[str, Any], name: str, checks: Mapping[str, _Check]) -> dict[str, Any]:
        table = self.table(doc.get(name, {}), (name,))
        return {} if table is None else self.fields(table, (name,), checks)

    def check(self, doc: Mapping[str, Any], env: Mapping[str, str]) -> Config | None:
        for key in doc:
            if key not in _TOP_KEYS:
                self.unknown((key,), _TOP_KEYS)
        daemon = self.section(doc, "daemon", _DAEMON)
        http = self.section(doc, "http", _HTTP)
        storage = self.section(doc, "storage", _STORAGE)
        supervisor = self.section(doc, "supervisor", _SUPERVISOR)
        initial = supervisor.get("backoff_initial_s", _default(SupervisorConfig, "backoff_initial_s"))
        maximum = supervisor.get("backoff_max_s", _default(SupervisorConfig, "backoff_max_s"))
        if maximum < initial:
            given = "" if "backoff_max_s" in supervisor else " (the default)"
            reason = f"must be >= backoff_initial_s ({initial:g}), got {maximum:g}{given}"
            self.report(("supervisor", "backoff_max_s"), reason)
        books = self.section(doc, "books", _BOOKS)
        derivatives = self.section(doc, "derivatives", _DERIVATIVES)
        capture = self.section(doc, "capture", _CAPTURE)
        nats = self.section(doc, "nats", _NATS)
        if "max_age" in nats:
            nats["max_age_s"] = nats.pop("max_age")
        if "roles" in daemon and set(daemon["roles"]) != set(ROLES) and not nats.get("servers"):
            self.report(
                ("daemon", "roles"),
                f"a daemon without every role ({', '.join(ROLES)}) needs NATS to reach the others: "
                'set [nats] servers, e.g. ["nats://127.0.0.1:4222"]',
            )
        archive = self.section(doc, "archive", _ARCHIVE)
        retention = storage.get("retention_days", 0)
        if 0 < retention <= archive.get("after_days", 0):
            reason = f"must be below storage.retention_days ({retention}): retention would delete them first"
            self.report(("archive", "after_days"), reason)
        feeds = self.feeds(doc)
        analytics = self.analytics(doc)
        if env.get(STORAGE_URL_ENV):
            try:
                storage["url"] = _storage_url(env[STORAGE_URL_ENV])
            except _Rejected as exc:
                self.report(("storage", "url"), f"from ${STORAGE_URL_ENV}: {exc.reason}", located=False)
        elif "url" not in storage:
            # SPEC §3: the SQLite database lives under state_dir unless told otherwise.
            state_dir = daemon.get("state_dir", _default(DaemonConfig, "state_dir"))
            storage["url"] = "sqlite:///" + posixpath.join(state_dir, "marketflow.db")
        if self.issues:
            return None
        return Config(
            daemon=DaemonConfig(**daemon),
            http=HttpConfig(**http),
            storage=StorageConfig(**storage),
            supervisor=SupervisorConfig(**supervisor),
            books=BooksConfig(**books),
            derivatives=DerivativesConfig(**derivatives),
            capture=CaptureConfig(**capture),
            nats=NatsConfig(**nats),
            archive=ArchiveConfig(**archive),
            feeds=DEFAULT_FEEDS if feeds is None else tuple(FeedConfig(**feed) for feed in feeds),
            analytics=AnalyticsConfig(**analytics),
        )

    def feeds(self, doc: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Checked keyword arguments for each feed; None when the file has no `feeds` (the defaults)."""
        if "feeds" not in doc:
            return None
        raw = doc["feeds"]
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.report(("feeds",), f"must be an array of tables, one [[feeds]] each, got {_describe(raw)}")
            return []
        feeds = [self.feed(index, item) for index, item in enumerate(raw)]
        seen: dict[str, int] = {}
        for index, feed in enumerate(feeds):
            name = feed.get("name")
            if name is None and "exchange" in feed and "market" in feed:
                name = f"{feed['exchange']}-{feed['market']}"
            if name is None:
                continue
            if name in seen:
                reason = f"feeds[{seen[name]}] and feeds[{index}] are both named {name!r}; "
                if "name" in feed:
                    reason += "feed names must be unique"
                else:
                    reason += "the name defaults to exchange-market, so give one of them a distinct name"
                self.report(("feeds", index, "name"), reason)
            else:
                seen[name] = index
        return feeds

    def feed(self, index: int, table: Mapping[str, Any]) -> dict[str, Any]:
        path: _Path = ("feeds", index)
        for key, example in _REQUIRED_FEED_KEYS.items():
            if key not in table:
                self.report((*path, key), f"required key is missing, e.g. {key} = {example}")
        checks: dict[str, _Check] = {
            "exchange": _choice(*VENUES),
            "market": _string,
            "symbols": lambda value: value,  # checked below, once the market is known
            "channels": lambda value: self.channels(value, (*path, "channels")),
            "book_depth": _integer(1),
            "ws_url": _url("ws://", "wss://"),
            "rest_url": _url("http://", "https://"),
            "name": _feed_name,
            "stale_timeout_s": _seconds,
            "ping_interval_s": _seconds,
            "max_message_mb": _message_mb,
        }
        feed = self.fields(table, path, checks)
        exchange = feed.get("exchange")
        venue = None if exchange is None else VENUES[exchange]
        if "market" in feed:
            if venue is not None:
                markets = tuple(venue.markets)
            else:
                markets = tuple(dict.fromkeys(m for v in VENUES.values() for m in v.markets))
            if feed["market"] not in markets:
                scope = f" for {exchange}" if exchange else ""
                got = _describe(feed.pop("market"))
                self.report((*path, "market"), f"must be one of {', '.join(markets)}{scope}, got {got}")
        market = None if venue is None else venue.markets.get(feed.get("market", ""))
        if market is not None and market.full_book:
            if "book_depth" in feed:
                self.report(
                    (*path, "book_depth"),
                    f"{feed['exchange']} {market.name} streams the whole book; remove book_depth "
                    "(no depth is chosen for it)",
                )
            feed["book_depth"] = market.default_book_depth
        elif venue is not None:
            # The market's depths; the venue's when the market is not known (the same on every market
            # of a venue that does not distinguish them, and then the message names just the venue).
            every = [m.book_depths for m in venue.markets.values()]
            depths = (
                market.book_depths if market is not None else tuple(sorted({d for ds in every for d in ds}))
            )
            depth_scope = (
                venue.name
                if market is None or all(ds == every[0] for ds in every)
                else f"{venue.name} {market.name}"
            )
            default = market.default_book_depth if market is not None else _default(FeedConfig, "book_depth")
            if feed.get("book_depth", default) not in depths:
                got = feed.get("book_depth", default)
                listed = ", ".join(map(str, depths))
                self.report((*path, "book_depth"), f"must be one of {listed} for {depth_scope}, got {got}")
            elif market is not None:
                feed.setdefault("book_depth", market.default_book_depth)
        if market is not None and "channels" in feed:
            for index, channel in enumerate(feed["channels"]):
                if channel not in market.channels:
                    offered = ", ".join(market.channels)
                    self.report(
                        (*path, "channels", index),
                        f"{exchange} {market.name} has no {channel!r} channel; it offers {offered}",
                    )
        if "symbols" in feed:
            # Spot or perpetual decides the normalized form, so symbols wait for a valid market.
            feed["symbols"] = self.symbols(feed["symbols"], (*path, "symbols"), exchange, market)
        return feed

    def symbols(
        self, value: object, path: _Path, exchange: str | None, market: Market | None
    ) -> tuple[str, ...]:
        """Normalized symbols; without a valid `market` only their types are checked."""
        if not isinstance(value, list) or not value:
            got = _describe(value)
            self.report(path, f'must be a non-empty array of symbols, e.g. ["BTCUSDT"], got {got}')
            return ()
        out: dict[str, int] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.report((*path, index), f'must be a symbol string like "BTCUSDT", got {_describe(item)}')
            elif exchange is not None and market is not None:
                try:
                    symbol = VENUES[exchange].normalize_symbol(market.name, item)
                except SymbolError as exc:
                    forms = f"{market.native_example} or {market.normalized_example}"
                    self.report((*path, index), f"{exc}; write a {market.name} symbol as {forms}")
                    continue
                if symbol in out:
                    self.report(
                        (*path, index), f"duplicate of {format_key((*path, out[symbol]))} (both are {symbol})"
                    )
                out.setdefault(symbol, index)
        return tuple(out)

    def channels(self, value: object, path: _Path) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            allowed = ", ".join(CHANNELS)
            raise _Rejected(f"must be a non-empty array of channels ({allowed}), got {_describe(value)}")
        bad = len(self.issues)
        for index, item in enumerate(value):
            if item not in CHANNELS:
                self.report((*path, index), f"must be one of {', '.join(CHANNELS)}, got {_describe(item)}")
            elif item in value[:index]:
                self.report((*path, index), f"duplicate channel {item!r}")
        if len(self.issues) > bad:
            raise _Rejected()
        return tuple(value)

    def analytics(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        checks: dict[str, _Check] = {
            "candle_intervals": lambda value: self.intervals(value, ("analytics", "candle_intervals")),
            "value_area": _value_area,
            "large_trade_notional": lambda value: _decimal(value, floats=False),
            "bin_size": lambda value: self.bin_sizes(value, ("analytics", "bin_size")),
            "enabled": _boolean,
            "live_bars": _integer(1),
        }
        return self.section(doc, "analytics", checks)

    def intervals(self, value: object, path: _Path) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Rejected(f'must be an array of intervals, e.g. ["1m", "5m"], got {_describe(value)}')
        bad = len(self.issues)
        seen: dict[int, int] = {}
        for index, item in enumerate(value):
            try:
                seconds = _interval_seconds(item)
            except _Rejected as exc:
                self.report((*path, index), str(exc.reason))
                continue
            if seconds in seen:
                self.report(
                    (*path, index),
                    f"duplicate of {format_key((*path, seen[seconds]))} (both are {seconds} seconds)",
                )
            seen.setdefault(seconds, index)
        if len(self.issues) > bad:
            raise _Rejected()
        return tuple(value)

    def bin_sizes(self, value: object, path: _Path) -> dict[str, Decimal]:
        table = self.table(value, path)
        if table is None:
            raise _Rejected()
        bad = len(self.issues)
        out: dict[str, Decimal] = {}
        for symbol, size in table.items():
            if not _normalized_on_some_venue(symbol):
                try:
                    normalized = normalize_symbol(symbol, perpetual=symbol.upper().endswith("-PERP"))
                except SymbolError:
                    normalized = None
                example = "'BTC-USDT' or 'BTC-USDT-PERP'"
                if "-" in symbol and normalized and _SYMBOL.fullmatch(normalized):
                    example = repr(normalized)
                self.report((*path, symbol), f"must be a normalized symbol, e.g. {example}")
                continue
            try:
                out[symbol] = _decimal(size, floats=False)
            except _Rejected as exc:
                self.report((*path, symbol), str(exc.reason))
        if len(self.issues) > bad:
            raise _Rejected()
        return out


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


# ------------------------------------------------------------------------------------------ key lines


class _KeyLocator:
    """Line of each key path in valid TOML text: `("feeds", 1, "symbols", 0)` -> 14.

    Tracks `[table]` and `[[array]]` headers, dotted and quoted keys, arrays spread over lines and inline
    tables. Only ever runs on text tomllib accepted; if it still trips, lines are simply unknown.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        self._lines: dict[_Path, int] = {}
        self._arrays: dict[_Path, int] = {}  # array-of-tables path -> how many elements so far
        with contextlib.suppress(IndexError, ValueError, KeyError):
            self._scan()

    def line_for(self, path: _Path) -> int | None:
        """The line of `path`, else of its nearest written parent (a missing key -> its table header)."""
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _mark(self, path: _Path, line: int, start: int = 1) -> None:
        for end in range(start, len(path) + 1):
            self._lines.setdefault(path[:end], line)

    def _scan(self) -> None:
        text, pos = self._text, 0
        table: _Path = ()
        while (pos := self._skip_blank(pos)) < len(text):
            line = self._line(pos)
            if text.startswith("[[", pos):
                keys, pos = self._key(pos + 2)
                pos = self._expect(pos, "]]")
                array = (*self._resolve(keys[:-1]), keys[-1])
                index = self._arrays.get(array, 0)
                self._arrays[array] = index + 1
                table = (*array, index)
                self._mark(table, line)
            elif text[pos] == "[":
                keys, pos = self._key(pos + 1)
                pos = self._expect(pos, "]")
                table = self._resolve(keys)
                self._mark(table, line)
            else:
                pos = self._key_value(pos, table)

    def _resolve(self, keys: list[str]) -> _Path:
        path: _Path = ()
        for key in keys:
            path = (*path, key)
            if path in self._arrays:  # `[feeds.x]` belongs to the latest [[feeds]]
                path = (*path, self._arrays[path] - 1)
        return path

    def _key_value(self, pos: int, table: _Path) -> int:
        line = self._line(pos)
        keys, pos = self._key(pos)
        pos = self._skip_space(self._expect(pos, "="))
        path = (*table, *keys)
        self._mark(path, line, start=len(table) + 1)
        return self._value(pos, path)

    def _key(self, pos: int) -> tuple[list[str], int]:
        text, keys = self._text, []
        while True:
            pos = self._skip_space(pos)
            if text[pos] == '"':
                end = self._basic_end(pos)
                keys.append(tomllib.loads("k = " + text[pos:end])["k"])
            elif text[pos] == "'":
                end = text.index("'", pos + 1) + 1
                keys.append(text[pos + 1 : end - 1])
            else:
                match = _BARE_KEY.match(text, pos)
                if match is None:
                    raise ValueError(pos)
                end = match.end()
                keys.append(match[0])
            pos = self._skip_space(end)
            if text[pos] != ".":
                return keys, pos
            pos += 1

    def _value(self, pos: int, path: _Path) -> int:
        text = self._text
        for quote in ('"""', "'''"):
            if text.startswith(quote, pos):
                end = pos + 3
                while not text.startswith(quote, end):
                    end += 2 if quote == '"""' and text[end] == "\\" else 1
                run = end + 3
                while run < len(text) and text[run] == quote[0] and run < end + 5:
                    run += 1  # up to two quotes may end the content: """a"""" holds a"
                return run
        if text[pos] == '"':
            return self._basic_end(pos)
        if text[pos] == "'":
            return text.index("'", pos + 1) + 1
        if text[pos] == "[":
            pos, index = pos + 1, 0
            while (pos := self._skip_blank(pos)) < len(text) and text[pos] != "]":
                if text[pos] == ",":
                    pos += 1
                    continue
                self._mark((*path, index), self._line(pos), start=len(path) + 1)
                pos = self._value(pos, (*path, index))
                index += 1
            return pos + 1
        if text[pos] == "{":
            pos += 1
            while (pos := self._skip_blank(pos)) < len(text) and text[pos] != "}":
                pos = pos + 1 if text[pos] == "," else self._key_value(pos, path)
            return pos + 1
        match = _SCALAR.match(text, pos)
        if match is None:
            raise ValueError(pos)
        return match.end()

    def _basic_end(self, pos: int) -> int:
        text, pos = self._text, pos + 1
        while text[pos] != '"':
            pos += 2 if text[pos] == "\\" else 1
        return pos + 1

    def _skip_space(self, pos: int) -> int:
        while pos < len(self._text) and self._text[pos] in " \t":
            pos += 1
        return pos

    def _skip_blank(self, pos: int) -> int:
        text = self._text
        while pos < len(text):
            if text[pos] in " \t\r\n":
                pos += 1
            elif text[pos] == "#":
                newline = text.find("\n", pos)
                pos = len(text) if newline < 0 else newline
            else:
                break
        return pos

    def _expect(self, pos: int, token: str) -> int:
        pos = self._skip_space(pos)
        if not self._text.startswith(token, pos):
            raise ValueError(pos)
        return pos + len(token)
