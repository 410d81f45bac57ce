"""The collect role's way out: trades → the JetStream trades stream, synced books → the book stream.

Trades reuse the storage writer whole (`storage/writer.py`): `NatsTradeStore` is a `TradeStore` whose
"database" is JetStream. So a collector that cannot reach NATS behaves like one whose database is down:
it keeps collecting, holds up to `storage.buffer_max` trades in memory, spools the rest to disk
(`<state_dir>/spool/nats`, fsynced, checksummed) and replays it in order when NATS answers again; a chunk
counts as written only once every message of it is acked by JetStream. A chunk sent twice (its acks were
lost, or it is replayed) has the same message ids, so JetStream keeps it once.

Books are published whole, at most every `nats.book_interval_s` per symbol, without acks: a lost one is
replaced by the next, and the stream keeps only the newest per subject. Chosen over publishing every
update: a serving daemon can start from any message (no venue sequence rules, no REST snapshot), and the
rate is bounded by the interval, not by the market (measured in docs/NATS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import trio

from marketflow.config import Config
from marketflow.model import Trade, now_us
from marketflow.nats.link import LinkActor, NatsError, NatsLink
from marketflow.nats.schema import pack_book, pack_trades, subject
from marketflow.pipeline.bookkeeper import LiveBooks
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Subscription
from marketflow.storage.spool import Spool
from marketflow.storage.writer import StorageWriter

log = logging.getLogger("marketflow.nats")


class NatsTradeStore:
    """A `TradeStore` that publishes to the trades stream; `write_trades` returns how many trades JetStream
    did not already have."""

    engine_name = "nats"

    def __init__(self, link: NatsLink) -> None:
        self._link = link
        self._prefix = link.config.subject_prefix

    @property
    def display_url(self) -> str:
        return "nats://" + ",".join(s.partition("://")[2] for s in self._link.config.servers)

    async def open(self) -> None:
        await self._link.open()

    async def write_trades(self, batch: Sequence[Trade]) -> int:
        messages: list[tuple[str, bytes, str]] = []
        counts: list[int] = []
        for exchange, symbol, payload, msg_id, count in pack_trades(batch):
            messages.append((subject(self._prefix, "trades", exchange, symbol), payload, msg_id))
            counts.append(count)
        duplicates = await self._link.publish_acked(messages)
        return sum(count for count, dup in zip(counts, duplicates, strict=True) if not dup)

    async def prune_trades(self, before_us: int, limit: int) -> int:
        return 0  # JetStream's max_age retires old messages

    async def close(self) -> None:
        await self._link.close()


def make_publisher(config: Config, subscription: Subscription[Trade]) -> StorageWriter:
    """The collect role's trade publisher: the storage writer over JetStream (a fresh one per restart)."""
    n = config.nats
    return StorageWriter(
        NatsTradeStore(NatsLink(n, "collect")),
        subscription,
        name="nats_trades",
        batch_max=config.storage.batch_max,
        flush_interval_s=n.flush_interval_s,
        backoff=Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s),
        spool=Spool(f"{config.daemon.state_dir}/spool/nats"),
        buffer_max=config.storage.buffer_max,
        shutdown_write_s=config.daemon.shutdown_timeout_s / 2,
    )


@attrs.frozen
class BookPublisherStatistics:
    name: str
    state: str
    published: int
    failures: int
    last_error: str | None


class BookPublisher(LinkActor):
    """Publishes every synced book that changed since its last message, every `interval_s`."""

    def __init__(self, books: LiveBooks, config: Config, *, name: str = "nats_books") -> None:
        self.name = name
        self._stop = trio.CancelScope()
        self._books = books
        self._link = NatsLink(config.nats, "books")
        self._prefix = config.nats.subject_prefix
        self._interval_s = config.nats.book_interval_s
        self._sent: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self._state = "starting"
        self._published = 0
        self._failures = 0
        self._last_error: str | None = None

    def statistics(self) -> BookPublisherStatistics:
        return BookPublisherStatistics(
            self.name, self._state, self._published, self._failures, self._last_error
        )

    def request_stop(self) -> None:
        """Stop now: books are live state, nothing is owed."""
        self._stop.cancel()

    async def _serve_forever(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()  # NATS may be down: books wait for it, nothing else does
        while True:
            try:
                await self._link.open()
                self._state = "running"
                while True:
                    await self._link.publish_core(self._changed())
                    await trio.sleep(self._interval_s)
            except NatsError as exc:  # NATS unreachable: books are live state, the next one will do
                self._failures += 1
                self._last_error = str(exc)
                self._state = "retrying"
                self._sent.clear()
                log.warning("publishing books failed; retrying", extra={"error": self._last_error})
                await self._link.close()
                await trio.sleep(max(self._interval_s, 1.0))

    def _changed(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        now = now_us()
        for exchange, symbol in self._books.keys():  # noqa: SIM118 (LiveBooks, not a dict)
            view = self._books.view(exchange, symbol)
            if view is None or view.status != "synced" or view.last_id is None:
                continue
            mark = (view.last_id, view.ts)
            if self._sent.get((exchange, symbol)) == mark:
                continue
            self._sent[(exchange, symbol)] = mark
            payload = pack_book(exchange, symbol, view.last_id, view.ts or now, now, view.bids, view.asks)
            out.append((subject(self._prefix, "book", exchange, symbol), payload))
        self._published += len(out)
        return out
