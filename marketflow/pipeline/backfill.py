"""Trade backfill over REST after a reconnect or a trade-id gap, de-duplicated, counted in the ledger.

The venue decides how (`Venue.trade_recovery`); this actor does the I/O, retries and bookkeeping:
- `BY_ID` venues (contiguous ids): the decoder reports the exact missing range (`TradeGap`) and
  `Venue.fill_gap` fetches exactly it, page by page.
- `CATCH_UP` venues (ids carry no order): after a reconnect `Venue.catch_up` fetches the latest trades and
  the feed's decoder admits only those newer than the disconnect (minus a margin for clock skew) that it
  has not seen (it remembers recent ids per symbol).

Requests arrive through non-blocking calls and are worked off one at a time by the actor; REST calls go
through the exchange market's weight budget. Recovered trades go to the trade bus like live ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import attrs
import msgspec
import trio

from marketflow import exchanges
from marketflow.exchanges.base import Fetch, FrameDecoder, RestRequest, TradeGap
from marketflow.model import GapRecord, Trade
from marketflow.pipeline.gaps import GapLedger
from marketflow.pipeline.rest import RestClient, RestError
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Bus

log = logging.getLogger("marketflow.backfill")

QUEUE = 1024
ATTEMPTS = 5
# Trades this much older than the local disconnect time are still considered (exchange/local clock skew).
CLOCK_MARGIN_US = 10_000_000


@attrs.frozen
class CatchUp:
    """A connection of a `CATCH_UP` venue is back: fetch what each of its symbols traded while it was down."""

    feed: str
    exchange: str
    market: str
    symbols: tuple[tuple[str, str], ...]  # (native, normalized)
    records: tuple[GapRecord, ...]
    down_since: int


@attrs.frozen
class BackfillStatistics:
    name: str
    queued: int
    requests: int
    recovered: int
    failed: int
    dropped: int


class BackfillQueue:
    """Requests waiting for the backfiller, its counters and the records of the request in hand.

    It outlives any one `Backfiller`: requests made while the actor restarts wait here, and a new actor
    closes the records its predecessor left open (the request it was working on when it ended).
    """

    def __init__(self, ledger: GapLedger, *, capacity: int = QUEUE) -> None:
        self._ledger = ledger
        self._send, self._receive = trio.open_memory_channel[TradeGap | CatchUp](capacity)
        self.requests = 0
        self.recovered = 0
        self.failed = 0
        self.dropped = 0
        self.in_hand: list[GapRecord] = []

    @property
    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    def request_trade_gaps(self, gaps: list[TradeGap]) -> None:
        for gap in gaps:
            self._submit(gap)

    def request_catch_up(self, request: CatchUp) -> None:
        self._submit(request)

    def _submit(self, request: TradeGap | CatchUp) -> None:
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            self.dropped += 1
            log.error("backfill queue full; request dropped", extra={"request": repr(request)})
            self._record_dropped(request)

    def _record_dropped(self, request: TradeGap | CatchUp) -> None:
        """A dropped request is a gap nobody will fill: the ledger says so (and no record stays open)."""
        why = "not backfilled: backfill queue full"
        if isinstance(request, TradeGap):
            reason = f"{_gap_reason(request)}; {why}"
            record = self._ledger.open(
                request.exchange, request.symbol, "trades", reason, start=request.since_ts
            )
            self._ledger.close(record, end=request.until_ts)
            return
        for record in request.records:
            self._ledger.close(msgspec.structs.replace(record, reason=f"{record.reason}; {why}"))

    async def receive(self) -> TradeGap | CatchUp:
        return await self._receive.receive()


class Backfiller:
    """Works off the requests of a `BackfillQueue`; publishes recovered trades on the trade bus.

    An actor: a fresh one per start, over the same queue.
    """

    def __init__(
        self,
        queue: BackfillQueue,
        trades: Bus[Trade],
        ledger: GapLedger,
        clients: Mapping[tuple[str, str], RestClient],
        decoders: Mapping[str, FrameDecoder],
        *,
        name: str = "backfill",
    ) -> None:
        self.name = name
        self.queue = queue
        self._trades = trades
        self._ledger = ledger
        self._clients = clients
        self._decoders = decoders
        self._scope = trio.CancelScope()

    def request_stop(self) -> None:
        """Stop now: a backfill cut short is recorded as such; storage is idempotent if it is redone."""
        self._scope.cancel()

    def request_trade_gaps(self, gaps: list[TradeGap]) -> None:
        self.queue.request_trade_gaps(gaps)

    def request_catch_up(self, request: CatchUp) -> None:
        self.queue.request_catch_up(request)

    def statistics(self) -> BackfillStatistics:
        q = self.queue
        return BackfillStatistics(self.name, q.queued, q.requests, q.recovered, q.failed, q.dropped)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._close_interrupted()
        task_status.started()
        with self._scope:
            while True:
                request = await self.queue.receive()
                self.queue.requests += 1
                if isinstance(request, TradeGap):
                    await self._fill_gap(request)
                else:
                    await self._catch_up(request)

    def _close_interrupted(self) -> None:
        """Close what an earlier backfiller left open: it ended (a crash, or a stop) in the middle of it."""
        for record in self.queue.in_hand:
            self._ledger.close(
                msgspec.structs.replace(record, reason=f"{record.reason}; not backfilled: interrupted")
            )
        self.queue.in_hand = []

    async def _get(self, client: RestClient, path: str, params: dict[str, str | int], weight: int) -> bytes:
        backoff = Backoff(0.5, 10.0)
        for attempt in range(ATTEMPTS):
            try:
                return await client.get(path, params, weight)
            except RestError as exc:
                if attempt == ATTEMPTS - 1:
                    raise
                delay = backoff.next_delay()
                log.warning(
                    "backfill request failed; retrying", extra={"error": str(exc), "retry_in_s": delay}
                )
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    def _fetch(self, client: RestClient) -> Fetch:
        async def fetch(request: RestRequest) -> bytes:
            return await self._get(client, request.path, request.params, request.weight)

        return fetch

    async def _fill_gap(self, gap: TradeGap) -> None:
        venue = exchanges.venue(gap.exchange)
        recovery = venue.trade_recovery(gap.market)
        reason = _gap_reason(gap)
        record = self._ledger.open(gap.exchange, gap.symbol, "trades", reason, start=gap.since_ts)
        self.queue.in_hand = [record]
        client = self._clients.get((gap.exchange, gap.market))
        if client is None or gap.next_seen - gap.first_missing > recovery.max_gap:
            why = "no REST endpoint" if client is None else "gap too wide to fetch"
            self._ledger.close(
                msgspec.structs.replace(record, reason=f"{reason}; not backfilled: {why}"), end=gap.until_ts
            )
            self.queue.in_hand = []
            return
        recovered = 0
        try:
            async for page in venue.fill_gap(gap, self._fetch(client)):
                await self._trades.publish(page)
                recovered += len(page)
                self.queue.in_hand = [msgspec.structs.replace(record, recovered=recovered)]
        except (RestError, ValueError) as exc:
            self.queue.failed += 1
            log.error("backfill failed", extra={"symbol": gap.symbol, "error": str(exc)})
            record = msgspec.structs.replace(record, reason=f"{reason}; backfill failed: {exc}")
        self.queue.recovered += recovered
        self.queue.in_hand = []
        self._ledger.close(record, recovered=recovered, end=gap.until_ts)

    async def _catch_up(self, request: CatchUp) -> None:
        decoder = self._decoders.get(request.feed)
        client = self._clients.get((request.exchange, request.market))
        if decoder is None or client is None:
            for record in request.records:
                self._ledger.close(
                    msgspec.structs.replace(
                        record, reason=record.reason + "; not backfilled: no REST endpoint"
                    )
                )
            return
        self.queue.in_hand = list(request.records)
        venue = exchanges.venue(request.exchange)
        fetch = self._fetch(client)
        for (native, symbol), record in zip(request.symbols, request.records, strict=True):
            recovered = 0
            try:
                fetched = await venue.catch_up(request.market, native, symbol, fetch)
                since = request.down_since - CLOCK_MARGIN_US
                admitted = decoder.admit_backfill(native, fetched, since)
                if admitted:
                    await self._trades.publish(admitted)
                    recovered = len(admitted)
            except (RestError, ValueError) as exc:
                self.queue.failed += 1
                log.error("backfill failed", extra={"symbol": symbol, "error": str(exc)})
                record = msgspec.structs.replace(record, reason=f"{record.reason}; backfill failed: {exc}")
            self.queue.recovered += recovered
            self.queue.in_hand.pop(0)
            self._ledger.close(record, recovered=recovered)


def _gap_reason(gap: TradeGap) -> str:
    id_name = exchanges.venue(gap.exchange).trade_recovery(gap.market).id_name
    return f"{id_name} {gap.first_missing}..{gap.next_seen - 1} missing"
