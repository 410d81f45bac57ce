"""What `Daemon.__init__` builds, declared once for the parts of the daemon that live in other modules.

`Daemon` (daemon.py) is assembled from parts, one module per concern: the table of children and their
factories (daemon_children.py), the NATS roles (daemon_nats.py), the feeds, reload and reconnect hooks
(daemon_feeds.py), and health and statistics (daemon_health.py). Each part subclasses `DaemonState` so
mypy checks it against these declarations; nothing is assigned here (the annotations are never evaluated).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    import trio

    from marketflow.analytics.candles import Candle
    from marketflow.analytics.engine import AnalyticsEngine
    from marketflow.api.queries import QueryContext
    from marketflow.api.ring import TradeRing
    from marketflow.archive.reader import TradeArchive
    from marketflow.capture import Capture
    from marketflow.config import Config
    from marketflow.daemon_children import Child
    from marketflow.daemon_feeds import Connection
    from marketflow.exchanges.base import FrameDecoder
    from marketflow.model import BookUpdate, RawFrames, Trade
    from marketflow.pipeline.backfill import BackfillQueue
    from marketflow.pipeline.bookkeeper import BookSnapshotRow, LiveBooks
    from marketflow.pipeline.feed import Feed, FeedCounters
    from marketflow.pipeline.gaps import GapLedger
    from marketflow.pipeline.instruments import InstrumentCatalog
    from marketflow.pipeline.market_actors import MarketDataPlant
    from marketflow.pipeline.rest import RestClient
    from marketflow.runtime.actor import Actor
    from marketflow.runtime.bus import Bus, Subscription
    from marketflow.runtime.memory import HeapTrimmer
    from marketflow.runtime.sink import RecordQueue
    from marketflow.runtime.supervisor import Supervisor
    from marketflow.storage.writer import StorageWriter, TradeStore


class DaemonState:
    """The attributes of a `Daemon` (see `Daemon.__init__` for what each holds and why)."""

    config: Config
    name: str
    _ssl_context: ssl.SSLContext | None
    _replay: bool
    heap: HeapTrimmer
    raw_bus: Bus[RawFrames]
    trade_bus: Bus[Trade]
    book_bus: Bus[BookUpdate]
    _raw_sub: Subscription[RawFrames]
    _collect: bool
    _store_role: bool
    _nats_publish: bool
    _nats_store: bool
    _nats_serve: bool
    _store_bus: Bus[Trade]
    _trade_sub: Subscription[Trade]
    _publish_sub: Subscription[Trade] | None
    view_bus: Bus[Trade]
    recent_ids: Any
    _market_keys: tuple[object, set[tuple[str, str]]]
    _book_sub: Subscription[BookUpdate]
    feed_channels: dict[str, frozenset[str]]
    capture: Capture | None
    store: TradeStore
    archive: TradeArchive | None
    writer: StorageWriter | None
    actors: dict[str, Actor]
    decoders: dict[str, FrameDecoder]
    feed_counters: dict[str, FeedCounters]
    feeds: dict[str, Feed]
    connections: dict[str, Connection]
    rest_clients: dict[tuple[str, str], RestClient]
    _reload_lock: trio.Lock
    _edit_lock: trio.Lock
    ledger: GapLedger
    market: MarketDataPlant
    books: LiveBooks
    backfill: BackfillQueue
    instruments: InstrumentCatalog
    candle_queue: RecordQueue[Candle]
    snapshot_queue: RecordQueue[BookSnapshotRow] | None
    analytics: AnalyticsEngine | None
    nats_candles: RecordQueue[Candle] | None
    ring: TradeRing
    query: QueryContext
    supervisor: Supervisor

    # Methods one part calls on another: the NATS roles (daemon_nats.py) fill rows of the table of children
    # (daemon_children.py), whose feeds and book keeper call back the hooks of daemon_feeds.py.
    _nats_children: Callable[[str], list[Child]]
    on_reconnect: Callable[[str, int, int], None]
    resubscribe: Callable[[str, list[str]], Awaitable[bool]]
