"""What a simulator run is told (`SimConfig`: listening, listings, rates, faults) and what it reports
(`SimStatistics`), and the exchange markets it serves (`MARKETS`)."""

from __future__ import annotations

import re

import attrs

from marketflow.sim import binance, bybit, coinbase, kraken, okx
from marketflow.sim.faults import Faults, strings
from marketflow.sim.market import DEFAULT_TRADE_HISTORY, MAX_TRADES_PER_FRAME

_SYMBOL = re.compile(r"[A-Z0-9]+")
MARKETS = {
    "bybit": bybit.CATEGORIES,
    "binance": binance.MARKETS,
    "okx": okx.MARKETS,
    "coinbase": coinbase.MARKETS,
    "kraken": kraken.MARKETS,
}


def _check_range(_: object, attribute: attrs.Attribute[tuple[int, int]], value: tuple[int, int]) -> None:
    low, high = value
    if not 1 <= low <= high <= MAX_TRADES_PER_FRAME:
        raise ValueError(f"{attribute.name} must satisfy 1 <= low <= high <= 1024, got {value!r}")


def _check_symbols(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for symbol in value:
        if not _SYMBOL.fullmatch(symbol):
            raise ValueError(f"symbols: {symbol!r} is not an upper-case native symbol like BTCUSDT")


_positive = attrs.validators.gt(0.0)
_optional_positive = attrs.validators.optional(_positive)


@attrs.frozen
class SimConfig:
    """How the simulator listens, what it lists, how fast it trades and which faults it injects."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    rate: float = attrs.field(default=10.0, validator=attrs.validators.ge(0.0))
    """Trade frames per second per subscribed tape; 0 = as fast as the clients read (benchmarks)."""
    symbols: tuple[str, ...] = attrs.field(
        default=("BTCUSDT", "ETHUSDT"), converter=strings, validator=_check_symbols
    )
    max_frames: int | None = None
    """Per tape: stop generating after this many frames (connections stay open)."""
    spot_trades_per_frame: tuple[int, int] = attrs.field(default=(1, 8), validator=_check_range)
    linear_trades_per_frame: tuple[int, int] = attrs.field(default=(1, 3), validator=_check_range)
    binance_trades_per_frame: tuple[int, int] = attrs.field(default=(1, 4), validator=_check_range)
    """aggTrades per cut; each aggTrade is its own WebSocket frame."""
    idle_timeout_s: float = attrs.field(default=600.0, validator=_positive)
    faults: Faults = Faults()
    record_delivered: bool = True
    """Keep every delivered trade for `delivered_trades()`; turn off for long runs and benchmarks."""
    trade_while_unsubscribed: bool = False
    """Tapes and books, once started, keep moving with nobody subscribed (so clients can miss trades)."""
    trade_history: int = attrs.field(default=DEFAULT_TRADE_HISTORY, validator=attrs.validators.ge(0))
    """Trades kept per tape (at least this many, packed) for REST and `generated_trades()`."""
    book_rate: float = attrs.field(default=10.0, validator=attrs.validators.ge(0.0))
    """Book updates per second per book; 0 = as fast as the clients read."""
    book_levels: int = attrs.field(default=200, validator=attrs.validators.ge(10))
    """Levels per side each book keeps about."""
    binance_ping_interval_s: float | None = attrs.field(default=None, validator=_optional_positive)
    """None = the real interval: spot 20 s, USD-M 180 s."""
    binance_pong_timeout_s: float | None = attrs.field(default=None, validator=_optional_positive)
    """None = the real deadline: spot 60 s, USD-M 600 s."""
    binance_max_lifetime_s: float = attrs.field(default=86_400.0, validator=_positive)
    coinbase_quiet: tuple[str, ...] = attrs.field(default=(), converter=strings)
    """Coinbase products listed besides `symbols` that never trade nor change (`XLM-USD`)."""
    okx_zero_checksum: bool = False
    """OKX `books` carry checksum 0, as OKX sends since 2026-06 (default: the real CRC32)."""
    okx_legacy_books: bool = False
    """OKX `books` carry no `seqId`/`prevSeqId` (older servers, recorded traffic)."""
    okx_no_book_snapshot: bool = False
    """OKX `books` sends no snapshot on subscribe (the announced delisting); REST `books` carries `seqId`."""
    okx_keepalive_s: float = attrs.field(default=okx.KEEPALIVE_S, validator=_positive)
    """An unchanged OKX `books` stream sends a keep-alive (`prevSeqId == seqId`) after this long."""
    kraken_quiet: tuple[str, ...] = attrs.field(default=(), converter=strings)
    """Kraken pairs (`XYZ/USD`) listed but never trading or changing: only heartbeats flow for them."""
    kraken_heartbeat_s: float | None = attrs.field(
        default=kraken.DEFAULT_HEARTBEAT_S, validator=_optional_positive
    )
    """Kraken heartbeats while subscribed; None = none (a quiet pair's connection then goes silent)."""


@attrs.frozen
class SimStatistics:
    connections: int
    connections_total: int
    frames_sent: int
    trades_sent: int
    subscribes: int
    rejected_subscribes: int
    pings: int
    malformed_sent: int
    drops: int
    book_frames_sent: int = 0
    pings_sent: int = 0
    rate_limited: int = 0
    rest_requests: int = 0
    rest_throttled: int = 0
