"""Publishers of the kinds `ticker`, `derivatives`, `liquidations` (collect role) and `candles` (serve role).

Collect role (`MarketPublisher`): the collector runs the single-process market-data keeper
(`pipeline/market_data.py`: every record merged in order, derivatives sampled per `sample_interval_s`,
quote changes, liquidations once), so the rows a single process would store are made here, from every
record. Every `book_interval_s` it publishes, per symbol that changed, one ticker and one derivatives
message holding the merged state and the rows made since (quotes, samples), and one message per new
liquidation — all acked by JetStream. Rows not acked go back to their queues and are sent again next round
(the same content has the same message id, so a resend after lost acks is dropped by JetStream); NATS down,
they wait there like the single-process sinks' rows (`runtime/sink.py`): in memory up to half of
`storage.record_buffer_max` per kind, then spilled to `<state_dir>/spool/records/<kind>/` and sent first, in
order, when NATS answers (a stop spills what memory holds; the next start sends it). Only with the disk
full too are the oldest dropped (counted) past `record_buffer_max`.

Why coalesce the states instead of packing every tick: a ticker feed runs at hundreds of records per second
per symbol on busy markets, but what a reader of the live state needs is its newest value; the rows that
must be complete (quotes, samples) travel beside it. Figures in docs/NATS.md.

Serve role (`CandlePublisher`): every closed (or corrected) candle of the serving daemon's analytics, one
a message, its id `exchange.symbol.interval.start.<content digest>`: several serve daemons see every trade
once (deduplicated) and make the same candle, which JetStream then keeps once. Collectors cannot make
candles: two collectors of a hot pair each see only their own connection's trades.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import attrs
import trio
import trio.lowlevel

from marketflow.analytics.candles import Candle
from marketflow.config import Config
from marketflow.model import DerivativesTick, Liquidation, Ticker
from marketflow.nats.link import LinkActor, NatsError, NatsLink
from marketflow.nats.market_schema import pack_candle, pack_derivatives, pack_liquidation, pack_ticker
from marketflow.nats.schema import subject
from marketflow.pipeline.market_actors import MarketDataPlant
from marketflow.pipeline.market_data import Quote
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.sink import RecordQueue, Taken
from marketflow.runtime.spill import SpillFactory

log = logging.getLogger("marketflow.nats")

Key = tuple[str, str]
Message = tuple[str, bytes, str]


@attrs.frozen
class MarketPublisherStatistics:
    name: str
    state: str
    messages: int
    liquidations: int
    samples: int
    quotes: int
    failures: int
    last_error: str | None


class _QueuePublisher(LinkActor):
    """Publishes in rounds; a round that NATS did not ack is reported and its rows are requeued."""

    name: str
    _state: str
    _failures: int
    _last_error: str | None

    async def _publish(self, messages: list[Message]) -> bool:
        if not messages:  # nothing waits to be sent: the state stays what the last publish made it
            return True
        try:
            await self._link.open()
            await self._link.publish_acked(messages)
        except NatsError as exc:  # unreachable or not acked in time: the caller requeues the rows
            self._failures += 1
            self._last_error = str(exc)
            self._state = "retrying"
            log.warning("publishing failed; retrying", extra={"actor": self.name, "error": self._last_error})
            await self._link.close()
            return False
        self._state = "running"
        return True


class MarketPublisher(_QueuePublisher):
    """The collect role's ticker, derivatives and liquidations out to JetStream (module docstring)."""

    def __init__(self, plant: MarketDataPlant, config: Config, *, name: str = "nats_market") -> None:
        self.name = name
        self._stop = trio.CancelScope()
        self._plant = plant
        self._link = NatsLink(config.nats, "market")
        self._prefix = config.nats.subject_prefix
        self._interval_s = config.nats.book_interval_s
        self._final_s = config.daemon.shutdown_timeout_s / 2
        self._backoff = Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s)
        self._sent: dict[tuple[str, str, str], Ticker | DerivativesTick] = {}
        self._state = "starting"
        self._messages = 0
        self._liquidations = 0
        self._samples = 0
        self._quotes = 0
        self._failures = 0
        self._last_error: str | None = None

    def statistics(self) -> MarketPublisherStatistics:
        return MarketPublisherStatistics(
            self.name,
            self._state,
            self._messages,
            self._liquidations,
            self._samples,
            self._quotes,
            self._failures,
            self._last_error,
        )

    def request_stop(self) -> None:
        """Stop after one last round (what the keeper flushed at its stop goes out too, within half the
        shutdown timeout)."""
        self._stop.cancel()

    async def _serve_forever(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()  # NATS may be down: the rows wait in their queues, nothing else waits
        plant = self._plant
        queues: list[RecordQueue[Any]] = [plant.derivatives, plant.liquidations, plant.quotes]
        try:
            async with trio.open_nursery() as nursery:
                for queue in queues:  # a publish that hangs must not make memory overflow
                    nursery.start_soon(queue.keep_spilling)
                while True:
                    published = await self._round()
                    if published is None:  # spilled rows went out: the next of them at once
                        await trio.lowlevel.checkpoint()
                        continue
                    await trio.sleep(self._interval_s if published else self._backoff.next_delay())
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._final_s):
                    await self._round()
                with trio.move_on_after(self._final_s):  # what NATS did not take waits on disk
                    for queue in queues:
                        await queue.spill_all()
                        await queue.close()

    async def _round(self) -> bool | None:
        """One round: True if published, False if not (the rows are back in their queues), None if it
        published rows read from a spill (more may wait there)."""
        plant = self._plant
        queues: list[RecordQueue[Any]] = [plant.derivatives, plant.liquidations, plant.quotes]
        for queue in queues:
            await queue.spill_overflow()
        samples = await plant.derivatives.take()
        liquidations = await plant.liquidations.take()
        quotes = await plant.quotes.take()
        taken: list[Taken[Any] | None] = [samples, liquidations, quotes]
        messages, marks = self._messages_of(_records(samples), _records(liquidations), _records(quotes))
        published = False
        try:
            published = await self._publish(messages)
        finally:  # not acked (or cancelled mid-publish: a stop): the rows go back for the next round
            if not published:
                for queue, batch in zip(queues, taken, strict=True):
                    if batch is not None:
                        queue.put_back(batch)
        if not published:
            return False
        self._backoff.reset()
        self._sent.update(marks)
        self._messages += len(messages)
        self._liquidations += len(_records(liquidations))
        self._samples += len(_records(samples))
        self._quotes += len(_records(quotes))
        ahead = False
        for queue, batch in zip(queues, taken, strict=True):
            if batch is not None:
                await queue.done(batch)
                ahead = ahead or batch.ahead
        return None if ahead else True

    def _messages_of(
        self,
        samples: Iterable[DerivativesTick],
        liquidations: Iterable[Liquidation],
        quotes: Iterable[Quote],
    ) -> tuple[list[Message], dict[tuple[str, str, str], Ticker | DerivativesTick]]:
        live = self._plant.live
        samples_of: dict[Key, list[DerivativesTick]] = {}
        for s in samples:
            samples_of.setdefault((s.exchange, s.symbol), []).append(s)
        quotes_of: dict[Key, list[Quote]] = {}
        for q in quotes:
            quotes_of.setdefault((q.exchange, q.symbol), []).append(q)
        messages: list[Message] = []
        marks: dict[tuple[str, str, str], Ticker | DerivativesTick] = {}
        for exchange, symbol in sorted(live.keys() | samples_of.keys() | quotes_of.keys()):
            ticker, derivatives = live.ticker(exchange, symbol)
            key_q = quotes_of.get((exchange, symbol), [])
            if ticker is not None and (key_q or self._sent.get(("ticker", exchange, symbol)) != ticker):
                payload, msg_id = pack_ticker(ticker, key_q)
                messages.append((subject(self._prefix, "ticker", exchange, symbol), payload, msg_id))
                marks["ticker", exchange, symbol] = ticker
            key_s = sorted(samples_of.get((exchange, symbol), []), key=lambda r: r.ts)
            if derivatives is not None and (
                key_s or self._sent.get(("derivatives", exchange, symbol)) != derivatives
            ):
                payload, msg_id = pack_derivatives(derivatives, key_s)
                messages.append((subject(self._prefix, "derivatives", exchange, symbol), payload, msg_id))
                marks["derivatives", exchange, symbol] = derivatives
        for liq in liquidations:
            payload, msg_id = pack_liquidation(liq)
            where = subject(self._prefix, "liquidations", liq.exchange, liq.symbol)
            messages.append((where, payload, msg_id))
        return messages, marks


@attrs.frozen
class CandlePublisherStatistics:
    name: str
    state: str
    candles: int
    failures: int
    last_error: str | None


class CandlePublisher(_QueuePublisher):
    """The serve role's closed candles out to JetStream (module docstring); drains `queue`, which the
    daemon's analytics feeds beside the `candles` table's."""

    def __init__(self, queue: RecordQueue[Candle], config: Config, *, name: str = "nats_candles") -> None:
        self.name = name
        self._stop = trio.CancelScope()
        self._queue = queue
        self._link = NatsLink(config.nats, "candles")
        self._prefix = config.nats.subject_prefix
        self._interval_s = config.nats.flush_interval_s
        self._final_s = config.daemon.shutdown_timeout_s / 2
        self._backoff = Backoff(config.supervisor.backoff_initial_s, config.supervisor.backoff_max_s)
        self._state = "starting"
        self._candles = 0
        self._failures = 0
        self._last_error: str | None = None

    def statistics(self) -> CandlePublisherStatistics:
        return CandlePublisherStatistics(
            self.name, self._state, self._candles, self._failures, self._last_error
        )

    def request_stop(self) -> None:
        self._stop.cancel()

    async def _serve_forever(self, task_status: trio.TaskStatus[None]) -> None:
        await self._queue.open()  # candles spilled by an earlier run go out first
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._queue.keep_spilling)  # a publish that hangs must not overflow
                while True:
                    await self._queue.wait_submitted()
                    await trio.sleep(self._interval_s)
                    if not await self._round():
                        await trio.sleep(self._backoff.next_delay())
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._final_s):
                    await self._round()
                with trio.move_on_after(self._final_s):  # what NATS did not take waits on disk
                    await self._queue.spill_all()
                    await self._queue.close()

    async def _round(self) -> bool:
        """The head and spilled candles first (batch after batch), then memory; False when NATS refused."""
        while True:
            await self._queue.spill_overflow()
            taken = await self._queue.take()
            if taken is None:  # nothing to send: the state stays what the last publish made it
                return True
            messages = [self._message(c) for c in taken.records]
            published = False
            try:
                published = await self._publish(messages)
            finally:  # not acked (or cancelled mid-publish: a stop): back for the next round
                if not published:
                    self._queue.put_back(taken)
            if not published:
                return False
            self._backoff.reset()
            self._candles += len(messages)
            await self._queue.done(taken)
            if not taken.ahead:
                return True

    def _message(self, candle: Candle) -> Message:
        payload, msg_id = pack_candle(candle)
        return subject(self._prefix, "candles", candle.exchange, candle.symbol), payload, msg_id


def candle_queue(spills: SpillFactory | None = None, capacity: int = 100_000) -> RecordQueue[Candle]:
    """The serve role's queue of candles to publish (a newer version of a candle replaces a queued one)."""
    return RecordQueue(
        "nats_candles",
        capacity=capacity,
        key=lambda c: (c.exchange, c.symbol, c.interval, c.start),
        spill=None if spills is None else spills("nats_candles", Candle),
    )


def _records(taken: Taken[Any] | None) -> list[Any]:
    return [] if taken is None else taken.records
