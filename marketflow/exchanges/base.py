"""The venue contract: everything a venue decides, behind one typed object (`Venue`).

Each venue is a package under `marketflow/exchanges/<name>/` whose `__init__.py` exports `VENUE`, an object
implementing `Venue` (checked by mypy: `VENUE: Venue = ...`), and is listed in `exchanges.VENUES`. The
pipeline, the daemon, the configuration and replay only ever talk to `VENUE` and to the objects it makes:

- `Market`: what `[[feeds]]` may say for a market (perpetual or not, book depths, symbol examples)
- `Session`: per-connection protocol rules (subscribe batching and acks, pacing, heartbeat, lifetime,
  telling data frames from control frames)
- `FrameDecoder`: raw data frames -> the model's `Trade` and `BookUpdate` (the per-frame hot path: one
  `decode` call per batch of frames, nothing in between)
- `Synchronizer` (`exchanges/orderbook.py`): one symbol's book under the venue's sequence/checksum rule
- `BookRecovery`, `snapshot_request`/`parse_snapshot`: how a broken book comes back (REST snapshot or
  resubscribe)
- `TradeRecovery`, `fill_gap`/`catch_up`: how missed trades come back over REST, and what a reconnect means
- `RestBudget`: the venue's published REST limit for a market (the daemon spends a share of it)
- `instruments`: optional per-instrument metadata (contract value, units) loaded over REST

A venue package imports only `marketflow.model`, this module, `exchanges/orderbook.py` and
`exchanges/symbols.py` (no trio, no pipeline): everything that does I/O is handed in (`Fetch`).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Literal, Protocol

import attrs

from marketflow.exchanges.orderbook import Synchronizer
from marketflow.model import BookUpdate, DerivativesTick, Liquidation, Ticker, Trade

Channel = Literal["trades", "book", "ticker", "derivatives", "liquidations"]
"""The channels a feed may carry (config `[[feeds]] channels`); `Market.channels` says which a market has."""

CHANNELS: tuple[Channel, ...] = ("trades", "book", "ticker", "derivatives", "liquidations")
"""Every channel, in the order help texts list them."""


@attrs.frozen
class ConnectionPlan:
    """One connection of a feed: `suffix` tells it apart in names (`""`, `/public`, `#2`)."""

    suffix: str
    url: str
    topics: tuple[str, ...]
    channels: frozenset[str]
    natives: tuple[str, ...]


@attrs.frozen
class SubscribeRequest:
    """One subscribe message and the topics it asks for."""

    req_id: str
    topics: tuple[str, ...]
    payload: bytes


@attrs.frozen
class Ack:
    """The venue answered a subscribe request: `rejected` lists the refused topics when it names them.

    `others_refused`: the venue refused the whole request because of the `rejected` topics, so the
    request's other topics are not subscribed either; the feed asks for them again in requests of their
    own (`Session.subscribe_topic_requests`), and a refused topic refuses only itself."""

    req_id: str | None
    success: bool
    reason: str
    rejected: tuple[str, ...] = ()
    others_refused: bool = False


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class Reconnect:
    """The venue announced the connection will end (Binance `serverShutdown`): replace it now."""

    reason: str


@attrs.frozen
class UnknownControl:
    """A non-data frame we do not understand; counted and logged, never fatal."""

    reason: str


@attrs.frozen
class DataFrame:
    """`Session.control` found a data frame after all (its keys in an unusual order): publish it as data.

    `is_data` is a cheap prefix test for the frames a venue really sends; the control decoder is the
    authority for everything else, and this event is how it says "data"."""


ControlEvent = Ack | Pong | Reconnect | UnknownControl | DataFrame


def is_data_frame(session: Session, message: bytes) -> bool:
    """The feed's rule, also used by replay: a data frame by prefix, or by the control decoder's word."""
    return session.is_data(message) or isinstance(session.control(message), DataFrame)


def sequence_marker(session: Session, message: bytes) -> bytes | None:
    """The frame to publish ahead of `message` when the session's sequence rule found a loss (feed,
    replay)."""
    check = session.sequence_check
    return None if check is None else check(message)


class Session(Protocol):
    """Per-connection protocol rules of one venue market."""

    topics: list[str]

    @property
    def send_interval_s(self) -> float:
        """Least time between two messages we send (the venue's inbound rate limit)."""
        ...

    @property
    def max_lifetime_s(self) -> float | None:
        """The venue closes connections at this age; the feed replaces them a little before."""
        ...

    def subscribe_requests(self) -> list[SubscribeRequest]:
        """Every topic of the connection, batched as the venue allows (sent on every (re)connect). The feed
        settles one request per `Ack` (by `req_id`, else the oldest pending)."""
        ...

    def subscribe_topic_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        """Subscribe requests for just these topics of the connection (the others of a refused request)."""
        ...

    def unsubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]: ...

    def resubscribe_requests(self, topics: Sequence[str]) -> list[SubscribeRequest]:
        """Requests that make the venue send fresh book snapshots for `topics` (empty: it cannot)."""
        ...

    def heartbeat(self) -> bytes | None:
        """The text frame to send every `ping_interval_s` (None: the venue pings us, the transport
        answers)."""
        ...

    def is_data(self, message: bytes) -> bool:
        """Fast path: True for a data frame in the venue's usual shape (a prefix test, no parsing)."""
        ...

    def control(self, message: bytes) -> ControlEvent:
        """Everything `is_data` said no to: an ack, a pong, a reconnect notice, or a `DataFrame`."""
        ...

    @property
    def sequence_check(self) -> Callable[[bytes], bytes | None] | None:
        """Venues numbering every message of a connection (Coinbase `sequence_num`): called with each
        message in order, before it is classified; returns a data frame to publish ahead of it when
        messages were lost in between (the venue's decoder turns it into book gaps), else None. None for
        venues without such a number (the feed then skips the call)."""
        ...


@attrs.frozen
class TradeGap:
    """Trade ids jumped: ids in `[first_missing, next_seen)` never arrived (Binance aggregate ids)."""

    exchange: str
    market: str
    symbol: str
    native: str
    first_missing: int
    next_seen: int
    since_ts: int
    until_ts: int


class DecodeCounters:
    """Plain counters a FrameDecoder keeps; read by the normalizer's statistics()."""

    __slots__ = (
        "frames",
        "trades",
        "book_updates",
        "tickers",
        "derivatives",
        "liquidations",
        "duplicates",
        "malformed",
        "unknown_topics",
        "ignored",
        "last_error",
    )

    def __init__(self) -> None:
        self.frames = 0
        self.trades = 0
        self.book_updates = 0
        self.tickers = 0
        self.derivatives = 0
        self.liquidations = 0
        self.duplicates = 0
        self.malformed = 0
        self.unknown_topics = 0
        self.ignored = 0
        self.last_error: str | None = None


@attrs.define
class Decoded:
    """What one wake-up of the normalizer decoded, across feeds.

    `tickers` and `derivatives` are partial updates: a field left None was not in the message and keeps
    its last value downstream (Bybit linear deltas, Binance mark price vs REST open interest), unless the
    record is a `snapshot`. `liquidations` are events, each with an identity (`Liquidation.id`)."""

    trades: list[Trade] = attrs.Factory(list)
    books: list[BookUpdate] = attrs.Factory(list)
    trade_gaps: list[TradeGap] = attrs.Factory(list)
    tickers: list[Ticker] = attrs.Factory(list)
    derivatives: list[DerivativesTick] = attrs.Factory(list)
    liquidations: list[Liquidation] = attrs.Factory(list)

    def clear(self) -> None:
        self.trades = []
        self.books = []
        self.trade_gaps = []
        self.tickers = []
        self.derivatives = []
        self.liquidations = []


class FrameDecoder(Protocol):
    """One connection's data frames -> normalized records (native -> normalized symbols).

    Trades go to `out.trades`, book messages to `out.books`; ticker, derivatives and liquidation frames to
    `out.tickers`, `out.derivatives`, `out.liquidations` (emit whatever a frame carries: one Bybit linear
    `tickers` frame makes a `Ticker` and a `DerivativesTick`; the normalizer keeps only the channels the
    connection's feed asked for).

    `decode` is the hot path: decode straight into msgspec Structs (decoders built once), no logging at
    info level, no per-frame allocation beyond the records made. Duplicate trades (a reconnect's or a
    replacement connection's overlap) are dropped here, by the venue's trade identity; id jumps are
    reported as `TradeGap`s in `out.trade_gaps` by venues whose trade ids are contiguous."""

    counters: DecodeCounters

    def decode(self, frames: list[bytes], recv_ts: int, out: Decoded) -> None: ...

    def admit_backfill(self, native: str, trades: list[Trade], since_ts: int) -> list[Trade]:
        """Of `trades` fetched by `Venue.catch_up`, those not seen yet and not older than `since_ts`
        (remembered as seen from now on), oldest first."""
        ...


# -- the venue ------------------------------------------------------------------------------------------


@attrs.frozen
class Market:
    """One market of a venue, as `[[feeds]] market` names it."""

    name: str
    perpetual: bool
    """Its normalized symbols end in `-PERP` (or carry a delivery date): not spot."""
    book_depths: tuple[int, ...]
    """The `book_depth` values config accepts for it."""
    default_book_depth: int
    """Used when a feed gives no `book_depth`."""
    native_example: str
    """A symbol as the venue writes it, for error messages (`BTCUSDT`, `BTC-USDT-SWAP`)."""
    normalized_example: str
    """The same symbol normalized (`BTC-USDT`, `BTC-USDT-PERP`)."""
    default_symbols: tuple[str, ...] = ()
    """Normalized symbols of the built-in default configuration (none: the market is not in it)."""
    channels: tuple[Channel, ...] = ("trades", "book")
    """The channels a feed on this market may ask for (config refuses others, naming these)."""
    polls: tuple[RestPoll, ...] = ()
    """Channels (or parts of them) that come over REST, polled per symbol by the pipeline."""
    full_book: bool = False
    """The venue streams the whole book and takes no depth (Coinbase `level2`): config refuses
    `book_depth`, `book_depths` is empty and `default_book_depth` is 0."""


@attrs.frozen
class RestPoll:
    """Data a market gives only over REST (Binance USD-M open interest), polled per symbol.

    The pipeline's poller asks `request(native)` for every symbol of a feed carrying `channel`, about every
    `interval_s` — stretched so that the feed's polls spend at most `budget_share` of the market's REST
    budget (the rest stays for snapshots and backfill) — and hands each answer to
    `parse(body, symbol, recv_ts, out)`, which appends records to `out` (a `Decoded`) or raises
    ValueError naming what it did not understand."""

    channel: Channel
    interval_s: float
    request: Callable[[str], RestRequest]
    parse: Callable[[bytes, str, int, Decoded], None]
    budget_share: float = 0.25


@attrs.frozen
class Topic:
    """What one subscription topic carries."""

    channel: Channel
    native: str


@attrs.frozen
class RestRequest:
    """One REST GET: path under the market's REST base URL, query parameters, weight in its budget."""

    path: str
    params: dict[str, str | int]
    weight: int = 1


@attrs.frozen
class RestBudget:
    """The venue's published REST limit for one market: `limit` weight per `window_s` (per IP). The daemon
    lets itself spend a share of it (`daemon.REST_BUDGET_SHARE`), leaving the rest to other clients."""

    limit: int
    window_s: float = 60.0


Fetch = Callable[[RestRequest], Awaitable[bytes]]
"""The pipeline's REST GET: spends the request's weight in the market's budget, retries with backoff,
returns a 200's body or raises `pipeline.rest.RestError`. Venue code just awaits it."""


class BookRecovery(enum.Enum):
    """How a book comes back after a gap, a disconnect, or at start."""

    RESUBSCRIBE = "resubscribe"
    """The WebSocket snapshot: resubscribe the topic (`Session.resubscribe_requests`)."""
    REST_SNAPSHOT = "rest_snapshot"
    """A REST snapshot (`Venue.snapshot_request`/`parse_snapshot`) when `Synchronizer.needs_snapshot()`;
    the stream is kept and buffered meanwhile."""


class ReconnectTrades(enum.Enum):
    """What a reconnect means for the trades missed while a connection was down."""

    CATCH_UP = "catch_up"
    """Ids carry no order: after a reconnect `Venue.catch_up` fetches the latest trades per symbol and the
    decoder admits the unseen ones (`FrameDecoder.admit_backfill`)."""
    BY_ID = "by_id"
    """Ids are contiguous: the first live trade after the reconnect reveals the gap (`TradeGap`), which
    `Venue.fill_gap` fetches exactly. The disconnect itself is recorded and closed at once."""
    NONE = "none"
    """Missed trades cannot be fetched: the outage is recorded as unrecovered."""


@attrs.frozen
class TradeRecovery:
    """A market's trade backfill strategy."""

    on_reconnect: ReconnectTrades
    reconnect_reason: str
    """The gap ledger's reason for a disconnect's trade record (e.g. "disconnected; missed trades are
    recovered by aggregate id")."""
    max_gap: int = 0
    """`BY_ID`: the widest id gap fetched whole; wider ones are recorded as not backfilled."""
    id_name: str = "trade ids"
    """What the venue's ids are called in the gap ledger (`aggregate trade ids 5..9 missing`)."""


@attrs.frozen
class Instrument:
    """Per-instrument metadata a venue may load over REST (`Venue.instruments`)."""

    native: str
    amount_unit: Literal["base", "contracts"] = "base"
    contract_value: Decimal | None = None
    contract_currency: str | None = None
    inverse: bool = False
    tick_size: Decimal | None = None
    lot_size: Decimal | None = None


class Venue(Protocol):
    """Everything one exchange decides. The pipeline sees only this (`exchanges.VENUES[name]`).

    Every method taking `market` may assume it is one of `markets` (config checked it); an unknown one
    raises `ValueError` naming the known ones.
    """

    @property
    def name(self) -> str:
        """The `[[feeds]] exchange` value, lower case (`VENUES` key, stored `exchange` column)."""
        ...

    @property
    def markets(self) -> Mapping[str, Market]: ...

    # -- symbols ----------------------------------------------------------------------------------

    def normalize_symbol(self, market: str, symbol: str) -> str:
        """A symbol as a user may write it (native or normalized, any case) -> normalized; raises
        `model.SymbolError` saying what is wrong."""
        ...

    def native_symbol(self, market: str, symbol: str) -> str:
        """A normalized symbol -> the venue's own spelling (what topics and REST take)."""
        ...

    # -- connections ------------------------------------------------------------------------------

    def ws_url(self, market: str, override: str | None = None) -> str:
        """The market's WebSocket URL (or base URL a plan appends paths to); `override` from config."""
        ...

    def rest_url(self, market: str, override: str | None = None) -> str: ...

    def topic(self, market: str, channel: Channel, native: str, book_depth: int) -> str:
        """The subscription topic of (channel, symbol)."""
        ...

    def parse_topic(self, market: str, topic: str) -> Topic | None:
        """The inverse of `topic` (None: not a topic of ours)."""
        ...

    def connections(
        self,
        market: str,
        natives: Sequence[str],
        channels: Sequence[str],
        book_depth: int,
        ws_override: str | None = None,
    ) -> list[ConnectionPlan]:
        """Which connections a feed needs and which topics each carries (sharding, routed paths)."""
        ...

    def session(self, market: str, topics: Sequence[str]) -> Session:
        """Fresh protocol state for one connection (made again on every reconnect)."""
        ...

    def decoder(self, market: str, symbols: Mapping[str, str]) -> FrameDecoder:
        """The decoder of one connection; `symbols` maps native -> normalized."""
        ...

    # -- books ------------------------------------------------------------------------------------

    def synchronizer(self, market: str) -> Synchronizer:
        """A fresh book state machine for one symbol (sequence rule, checksum)."""
        ...

    def book_recovery(self, market: str) -> BookRecovery: ...

    def snapshot_request(self, market: str, native: str) -> RestRequest:
        """`REST_SNAPSHOT` venues: the request for one symbol's book snapshot."""
        ...

    def parse_snapshot(self, market: str, body: bytes, symbol: str, recv_ts: int) -> BookUpdate:
        """`REST_SNAPSHOT` venues: the answer -> a snapshot `BookUpdate`; raises ValueError if not
        understood."""
        ...

    # -- trades -----------------------------------------------------------------------------------

    def trade_recovery(self, market: str) -> TradeRecovery: ...

    def fill_gap(self, gap: TradeGap, fetch: Fetch) -> AsyncIterator[list[Trade]]:
        """`BY_ID`: the missing trades of `gap`, page by page (only ids in the gap); raises ValueError
        on an answer not understood."""
        ...

    async def catch_up(self, market: str, native: str, symbol: str, fetch: Fetch) -> list[Trade]:
        """`CATCH_UP`: the latest trades of one symbol, oldest first (the decoder filters them)."""
        ...

    # -- REST -------------------------------------------------------------------------------------

    def rest_budget(self, market: str) -> RestBudget:
        """The weight budget of the market's REST client (shared by snapshots, backfill, instruments)."""
        ...

    async def instruments(self, market: str, natives: Sequence[str], fetch: Fetch) -> list[Instrument]:
        """Metadata of `natives` (empty: the venue needs none; amounts are base units)."""
        ...
