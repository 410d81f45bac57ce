"""The store role: the trades stream → the database, through one durable pull consumer that every store
daemon shares (JetStream hands each message to one of them).

A fetched batch is acked only after the database committed it. A store daemon that dies holding messages
leaves them unacked: JetStream gives them to another one after `nats.ack_wait_s`. Writes are idempotent by
trade identity (`write_trades` skips rows the table has), so a batch written and then redelivered (the
daemon died between commit and ack), or the same trade published by two redundant collectors, is one row.
"""

from __future__ import annotations

import logging

import attrs
import trio

from marketflow.config import Config
from marketflow.model import Trade
from marketflow.nats.link import LinkActor, NatsError, NatsLink
from marketflow.nats.schema import PayloadError, stream_name, unpack_trades
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

    def __init__(self, store: TradeStore, config: Config, *, name: str = "nats_store") -> None:
        self.name = name
        self._stop = trio.CancelScope()
        self._store = store
        self._link = NatsLink(config.nats, "store")
        self._durable = stream_name(config.nats.subject_prefix, "store")
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
        msgs = await self._link.fetch(self._durable, "trades", FETCH_MESSAGES, FETCH_WAIT_S)
        if not msgs:
            return
        trades: list[Trade] = []
        for msg in msgs:
            try:
                trades.extend(unpack_trades(msg.data))
            except PayloadError as exc:  # never writable: acked with the rest, counted and logged
                self._malformed += 1
                log.error(
                    "malformed trades message skipped", extra={"subject": msg.subject, "error": str(exc)}
                )
        await self._write(trades)
        await self._link.ack(msgs)
        self._messages += len(msgs)
        self._backoff.reset()

    async def _write(self, trades: list[Trade]) -> None:
        """Until committed: the messages stay unacked meanwhile (another store daemon may take them over
        after `ack_wait_s`; writing them twice is harmless)."""
        while True:
            try:
                inserted = await self._store.write_trades(trades)
            except Exception as exc:  # any driver failure: keep the batch, back off, try again
                self._note(exc, "storage write failed; retrying")
                await trio.sleep(self._backoff.next_delay())
                continue
            self._state = "running"
            self._trades += len(trades)
            self._rows_written += inserted
            self._duplicates += len(trades) - inserted
            return

    def _note(self, exc: Exception, message: str) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._state = "retrying"
        log.error(message, extra={"error": self._last_error})
