"""The serve role's way in: every collector's trades and books from JetStream → this daemon's live views.

Trades go onto the serving bus (analytics, the trade ring), each trade once: redundant collectors (a hot
pair) publish the same trade in different messages, so trades are filtered by identity against the ids
seen recently per symbol (two generations of `RECENT_IDS`, like a venue decoder's duplicate filter).
Books arrive whole (`collect.py`) and replace the mirrored book of their symbol (`MirrorBook`), so `/book`
answers for symbols collected on other machines. Ticker and derivatives states, the collectors' derivatives
samples and their liquidations (`market.py`) go into the daemon's `LiveMarketData` (newest state by `ts`,
samples by instant, liquidations by identity), so `/ticker`, `/derivatives`, `/liquidations` and the
order-flow bars' liquidation and open-interest fields answer for them too; a symbol this daemon collects
itself keeps its own.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

import attrs
import trio
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from marketflow.config import Config
from marketflow.exchanges.orderbook import BookSync, Gap
from marketflow.model import BookUpdate, Trade
from marketflow.nats.link import Inbox, LinkActor, NatsError, NatsLink, Start
from marketflow.nats.market_schema import (
    MARKET_KINDS,
    DerivativesUpdate,
    TickerUpdate,
    subject_parts,
    unpack_market,
)
from marketflow.nats.schema import PayloadError, unpack_book, unpack_trades
from marketflow.pipeline.bookkeeper import LiveBooks
from marketflow.pipeline.market_data import LiveMarketData
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Bus

log = logging.getLogger("marketflow.nats")

RECENT_IDS = 10_000
"""Per symbol and generation (~60 B an id): a duplicate is caught while fewer than this many newer trades
of its symbol came in (seconds on busy markets: the two collectors of a hot pair publish within
`flush_interval_s` of each other)."""
TAKE_MESSAGES = 512


class RecentIds:
    """Trade ids seen lately per (exchange, symbol): two generations, the older dropped when the newer
    holds `limit` ids, so memory stays bounded and a duplicate is caught while it is that recent.

    Also where the serve role stands in the trades stream, kept here because it must outlive a subscriber
    (a new connection, a restarted actor): `next_seq`, the stream sequence after the last trades message
    taken, or before the first, `since`, when this was made (the daemon's start: a serve daemon started
    while NATS is down still sees every trade stored since)."""

    def __init__(self, limit: int = RECENT_IDS, *, since: datetime.datetime | None = None) -> None:
        self._limit = limit
        self._ids: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
        self.since = since if since is not None else datetime.datetime.now(datetime.UTC)
        self.next_seq: int | None = None

    def start(self) -> Start:
        """Where the next trades subscription starts (overlap is harmless: `fresh` drops it)."""
        return Start(self.since, self.next_seq)

    def fresh(self, trades: list[Trade]) -> list[Trade]:
        """The trades of `trades` not seen before (and remember them)."""
        out: list[Trade] = []
        for t in trades:
            key = (t.exchange, t.symbol)
            generations = self._ids.get(key)
            if generations is None:
                generations = self._ids[key] = (set(), set())
            current, previous = generations
            if t.id in current or t.id in previous:
                continue
            if len(current) >= self._limit:
                previous = current
                current = set()
                self._ids[key] = (current, previous)
            current.add(t.id)
            out.append(t)
        return out


class MirrorBook(BookSync):
    """A `Synchronizer` for a book kept elsewhere: every message is the whole book (a snapshot)."""

    def on_update(self, update: BookUpdate) -> Gap | None:
        return self._set_snapshot(update)

    def on_snapshot(self, update: BookUpdate) -> Gap | None:
        return self._set_snapshot(update)


def mirror_books(books: LiveBooks, *, only_waiting: bool = False) -> None:
    """Books of this daemon come from NATS, not from its own feeds (`only_waiting`: those added since)."""
    for key in books.keys():  # noqa: SIM118 (LiveBooks, not a dict)
        if not (only_waiting and isinstance(books.books[key], MirrorBook)):
            books.books[key] = MirrorBook()


@attrs.frozen
class ServeStatistics:
    name: str
    state: str
    trades: int
    duplicates: int
    books: int
    malformed: int
    dropped_messages: int
    errors: int
    last_error: str | None
    market_messages: int
    skipped: int
    """Trades messages gone from the stream (past `max_age`) before this role resumed there."""


class ServeSubscriber(LinkActor):
    """Subscribes to `<prefix>.trades.>` (from where `recent` left off), `<prefix>.book.>` and, with
    `market`, the ticker, derivatives and liquidations subjects (from the newest of each, then live).
    `collected(exchange, symbol)`: this daemon's own feeds carry that symbol's market data (it is not
    mirrored)."""

    def __init__(
        self,
        trades: Bus[Trade],
        books: LiveBooks,
        recent: RecentIds,
        config: Config,
        *,
        market: LiveMarketData | None = None,
        collected: Callable[[str, str], bool] = lambda exchange, symbol: False,
        name: str = "nats_serve",
    ) -> None:
        self.name = name
        self._stop = trio.CancelScope()
        self._bus = trades
        self._books = books
        self._recent = recent
        self._market = market
        self._collected = collected
        self._market_messages = 0
        self._link = NatsLink(config.nats, "serve")
        self._prefix = config.nats.subject_prefix
        self._backoff = Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s)
        self._state = "starting"
        self._trades = 0
        self._duplicates = 0
        self._book_messages = 0
        self._malformed = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._resumed_at: int | None = None
        """The stream sequence the trades subscription resumed at, until its first message came."""
        self._skipped = 0

    def statistics(self) -> ServeStatistics:
        return ServeStatistics(
            self.name,
            self._state,
            self._trades,
            self._duplicates,
            self._book_messages,
            self._malformed,
            self._dropped,
            self._errors,
            self._last_error,
            self._market_messages,
            self._skipped,
        )

    def request_stop(self) -> None:
        """Stop now: a serving view owes nothing to anyone."""
        self._stop.cancel()

    async def _serve_forever(self, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                await self._link.open()
                # From where the last subscription left off (the trades published meanwhile, e.g. a
                # collector's spool replayed as NATS came back), not from now.
                start = self._recent.start()
                self._resumed_at = start.seq
                trades = await self._link.subscribe("trades", f"{self._prefix}.trades.>", deliver=start)
                books = await self._link.subscribe(
                    "book", f"{self._prefix}.book.>", deliver=DeliverPolicy.LAST_PER_SUBJECT
                )
                market = None
                for kind in MARKET_KINDS if self._market is not None else ():
                    market = await self._link.subscribe(
                        kind,
                        f"{self._prefix}.{kind}.>",
                        deliver=DeliverPolicy.LAST_PER_SUBJECT,
                        inbox=market,
                    )
                self._state = "running"
                if not started:
                    task_status.started()
                    started = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._books_loop, books)
                    if market is not None:
                        nursery.start_soon(self._market_loop, market)
                    while True:
                        msgs = await self._link.take(trades, TAKE_MESSAGES)
                        self._dropped = trades.dropped
                        await self._publish(msgs)
            except* NatsError as group:
                self._errors += 1
                self._last_error = str(group.exceptions[0])
                self._state = "retrying"
                log.error("NATS subscription failed; retrying", extra={"error": self._last_error})
                if not started:  # serving starts anyway: the views fill once NATS answers
                    task_status.started()
                    started = True
            # A fresh connection and fresh subscriptions (the old ones must not feed the bus twice).
            await self._link.close()
            await trio.sleep(self._backoff.next_delay())

    async def _publish(self, msgs: list[Msg]) -> None:
        if msgs:  # in stream order: the last one tells where to resume (read once a batch, not per message)
            if self._resumed_at is not None:
                self._note_gap(self._resumed_at, msgs[0])
            self._recent.next_seq = msgs[-1].metadata.sequence.stream + 1
        received: list[Trade] = []
        for msg in msgs:
            try:
                received.extend(unpack_trades(msg.data))
            except PayloadError:
                self._malformed += 1
        fresh = self._recent.fresh(received)
        self._duplicates += len(received) - len(fresh)
        self._trades += len(fresh)
        if fresh:
            await self._bus.publish(fresh)

    def _note_gap(self, expected: int, first: Msg) -> None:
        """Logged once per resumption: the stream no longer held where this role left it (`max_age`)."""
        self._resumed_at = None
        seq = first.metadata.sequence.stream
        if seq > expected:
            self._skipped += seq - expected
            log.warning(
                "trades stream no longer holds where serving left off; resumed at its first message",
                extra={"expected_seq": expected, "resumed_seq": seq},
            )

    async def _books_loop(self, inbox: Inbox) -> None:
        books = self._books
        while True:
            msgs = await self._link.take(inbox, TAKE_MESSAGES)
            for msg in msgs:
                try:
                    update = unpack_book(msg.data)
                except PayloadError:
                    self._malformed += 1
                    continue
                key = (update.exchange, update.symbol)
                sync = books.books.get(key)
                if isinstance(sync, MirrorBook):  # a book this daemon collects itself stays its own
                    sync.on_snapshot(update)
                    books.updated[key] = update.ts
                    self._book_messages += 1

    async def _market_loop(self, inbox: Inbox) -> None:
        live = self._market
        assert live is not None
        while True:
            for msg in await self._link.take(inbox, TAKE_MESSAGES):
                try:
                    kind, exchange, symbol = subject_parts(self._prefix, msg.subject)
                    update = unpack_market(kind, msg.data, (exchange, symbol))
                except PayloadError as exc:  # counted and logged (repeats rate-limited), never applied
                    self._malformed += 1
                    log.warning(
                        "malformed message skipped", extra={"subject": msg.subject, "error": str(exc)}
                    )
                    continue
                if self._collected(exchange, symbol):
                    continue
                self._market_messages += 1
                if isinstance(update, TickerUpdate):
                    live.mirror_ticker(update.ticker)
                elif isinstance(update, DerivativesUpdate):
                    live.mirror_derivatives(update.state, update.samples)
                else:
                    live.mirror_liquidations(update)
