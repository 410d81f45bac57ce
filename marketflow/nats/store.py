"""The store role: the trades stream (and the market-data stream: `MarketStoreConsumer`) → the database,
through one durable pull consumer each that every store daemon shares (JetStream hands each message to one
of them).

A fetched batch is acked only after the database committed it. A store daemon that dies holding messages
leaves them unacked: JetStream gives them to another one after `nats.ack_wait_s`. Writes are idempotent by
trade identity (`write_trades` skips rows the table has), so a batch written and then redelivered (the
daemon died between commit and ack), or the same trade published by two redundant collectors, is one row.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio
from nats.aio.msg import Msg

from marketflow.config import Config
from marketflow.model import DerivativesTick, Liquidation, Trade
from marketflow.nats.link import LinkActor, NatsError, NatsLink
from marketflow.nats.market_schema import DerivativesUpdate, TickerUpdate, subject_parts, unpack_market
from marketflow.nats.schema import PayloadError, stream_name, unpack_trades
from marketflow.pipeline.market_data import Quote
from marketflow.runtime.backoff import Backoff
from marketflow.storage.writer import TradeStore

log = logging.getLogger("marketflow.nats")

FETCH_MESSAGES = 256
FETCH_WAIT_S = 1.0


@attrs.frozen
class StoreConsumerStatistics:
    name: str
    state: str
    messages: int
    trades: int
    rows_written: int
    duplicates: int
    malformed: int
    errors: int
    last_error: str | None


class StoreConsumer(LinkActor):
    """Fetches trades messages, writes their trades through `store`, then acks them."""

    _stream = "trades"
    _durable_suffix = "store"
    _link_name = "store"

    def __init__(self, store: TradeStore, config: Config, *, name: str = "nats_store") -> None:
        self.name = name
        self._stop = trio.CancelScope()
        self._store = store
        self._link = NatsLink(config.nats, self._link_name)
        self._durable = stream_name(config.nats.subject_prefix, self._durable_suffix)
        self._backoff = Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s)
        self._state = "starting"
        self._messages = 0
        self._trades = 0
        self._rows_written = 0
        self._duplicates = 0
        self._malformed = 0
        self._errors = 0
        self._last_error: str | None = None

    def statistics(self) -> StoreConsumerStatistics:
        return StoreConsumerStatistics(
            self.name,
            self._state,
            self._messages,
            self._trades,
            self._rows_written,
            self._duplicates,
            self._malformed,
            self._errors,
            self._last_error,
        )

    def request_stop(self) -> None:
        """Stop between two messages: what was fetched and not acked is redelivered (nothing is lost)."""
        self._stop.cancel()

    async def _serve_forever(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()  # NATS or the database may be down: this actor waits for them, nothing else
        while True:
            try:
                await self._link.open()
                self._state = "running"
                while True:
                    await self._step()
            except NatsError as exc:
                self._note(exc, "NATS failed; reconnecting")
                await self._link.close()
                await trio.sleep(self._backoff.next_delay())

    async def _step(self) -> None:
        msgs = await self._link.fetch(self._durable, self._stream, FETCH_MESSAGES, FETCH_WAIT_S)
        if not msgs:
            return
        await self._handle(msgs)
        await self._link.ack(msgs)
        self._messages += len(msgs)
        self._backoff.reset()

    def _refuse(self, msg: Msg, exc: PayloadError) -> None:
        """A message that can never be written: acked with the rest, counted and logged (repeats are
        rate-limited by the log handler, `logs.py`)."""
        self._malformed += 1
        log.error("malformed message skipped", extra={"subject": msg.subject, "error": str(exc)})

    async def _handle(self, msgs: list[Msg]) -> None:
        trades: list[Trade] = []
        for msg in msgs:
            try:
                trades.extend(unpack_trades(msg.data))
            except PayloadError as exc:
                self._refuse(msg, exc)

        async def write() -> None:
            inserted = await self._store.write_trades(trades)
            self._trades += len(trades)
            self._rows_written += inserted
            self._duplicates += len(trades) - inserted

        await self._write(write)

    async def _write(self, write: Callable[[], Awaitable[None]]) -> None:
        """Until committed: the messages stay unacked meanwhile (another store daemon may take them over
        after `ack_wait_s`; writing them twice is harmless)."""
        while True:
            try:
                await write()
            except Exception as exc:  # any driver failure: keep the batch, back off, try again
                self._note(exc, "storage write failed; retrying")
                await trio.sleep(self._backoff.next_delay())
                continue
            self._state = "running"
            return

    def _note(self, exc: Exception, message: str) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._state = "retrying"
        log.error(message, extra={"error": self._last_error})


@attrs.frozen
class MarketStoreStatistics:
    name: str
    state: str
    messages: int
    samples: int
    liquidations: int
    quotes: int
    malformed: int
    errors: int
    last_error: str | None


class MarketStoreConsumer(StoreConsumer):
    """The market-data stream (`ticker`, `derivatives`, `liquidations`) → the `derivatives`,
    `liquidations` and (with `store_quotes`) `quotes` tables, through its own shared durable consumer.

    Stateless: the collector already made the rows (samples per `sample_interval_s`, quote changes) with the
    single-process code, so any store daemon can write any message. Idempotent where the tables have an
    identity: samples upsert by (exchange, symbol, ts), liquidations are skipped when stored. Quotes have
    none: a message redelivered after its rows were committed adds them again (docs/NATS.md)."""

    _stream = "market"
    _durable_suffix = "store_market"
    _link_name = "store-market"

    def __init__(self, store: object, config: Config, *, name: str = "nats_store_market") -> None:
        super().__init__(store, config, name=name)  # type: ignore[arg-type]  # any store with the §12 writers
        self._prefix = config.nats.subject_prefix
        self._write_samples = getattr(store, "write_derivatives", None)
        self._write_liquidations = getattr(store, "write_liquidations", None)
        self._write_quotes = getattr(store, "write_quotes", None) if config.storage.store_quotes else None
        self._samples = 0
        self._liquidations = 0
        self._quotes = 0

    def statistics(self) -> MarketStoreStatistics:  # type: ignore[override]
        return MarketStoreStatistics(
            self.name,
            self._state,
            self._messages,
            self._samples,
            self._liquidations,
            self._quotes,
            self._malformed,
            self._errors,
            self._last_error,
        )

    async def _handle(self, msgs: list[Msg]) -> None:
        samples: list[DerivativesTick] = []
        liquidations: list[Liquidation] = []
        quotes: list[Quote] = []
        for msg in msgs:
            try:
                kind, exchange, symbol = subject_parts(self._prefix, msg.subject)
                update = unpack_market(kind, msg.data, (exchange, symbol))
            except PayloadError as exc:
                self._refuse(msg, exc)
                continue
            if isinstance(update, TickerUpdate):
                quotes.extend(update.quotes)
            elif isinstance(update, DerivativesUpdate):
                samples.extend(update.samples)
            else:
                liquidations.extend(update)
        write_samples, write_liquidations, write_quotes = (
            self._write_samples,
            self._write_liquidations,
            self._write_quotes,
        )
        # One row per sample instant, the newest version (as the single-process sink's queue keeps it).
        latest = list({(s.exchange, s.symbol, s.ts): s for s in samples}.values())

        async def write() -> None:
            if latest and write_samples is not None:
                await write_samples(latest)
            if liquidations and write_liquidations is not None:
                await write_liquidations(liquidations)
            if quotes and write_quotes is not None:
                await write_quotes(quotes)
            self._samples += len(latest)
            self._liquidations += len(liquidations)
            self._quotes += len(quotes)

        await self._write(write)
