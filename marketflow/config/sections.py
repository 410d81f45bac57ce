"""The typed configuration: one frozen attrs class per TOML section, their defaults, and `Config`.

The rest of the daemon only ever sees these classes; `marketflow.config.checker` builds them from a
checked document.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final

import attrs

from marketflow.exchanges import VENUES
from marketflow.exchanges.base import CHANNELS as VENUE_CHANNELS

STORAGE_URL_ENV: Final = "MARKETFLOW_STORAGE_URL"
CONFIG_PATH_ENV: Final = "MARKETFLOW_CONFIG"
DEFAULT_CONFIG_FILE: Final = "marketflow.toml"

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("console", "json")
ROLES: Final = ("collect", "store", "serve")
CHANNELS: Final = VENUE_CHANNELS


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
    # Records of each other kind (liquidations, samples, candles, gaps, ...) held in memory while the
    # database does not take them; past half of it the oldest spill to `<state_dir>/spool/records/`.
    record_buffer_max: int = 100_000
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
