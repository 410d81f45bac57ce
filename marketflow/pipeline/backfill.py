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


class Backfiller:
    """Works off trade-gap and catch-up requests; publishes recovered trades on the trade bus."""

    def __init__(
        self,
        trades: Bus[Trade],
        ledger: GapLedger,
        clients: Mapping[tuple[str, str], RestClient],
        decoders: Mapping[str, FrameDecoder],
        *,
        name: str = "backfill",
    ) -> None:
        self.name = name
        self._trades = trades
        self._ledger = ledger
        self._clients = clients
        self._decoders = decoders
        self._send, self._receive = trio.open_memory_channel[TradeGap | CatchUp](QUEUE)
        self._requests = 0
        self._recovered = 0
        self._failed = 0
        self._dropped = 0
        self._scope = trio.CancelScope()

    def request_stop(self) -> None:
        """Stop now: a backfill cut short is recorded as such; storage is idempotent if it is redone."""
        self._scope.cancel()

    def statistics(self) -> BackfillStatistics:
        queued = self._send.statistics().current_buffer_used
        return BackfillStatistics(
            self.name, queued, self._requests, self._recovered, self._failed, self._dropped
        )

    def request_trade_gaps(self, gaps: list[TradeGap]) -> None:
        for gap in gaps:
            self._submit(gap)

    def request_catch_up(self, request: CatchUp) -> None:
        self._submit(request)

    def _submit(self, request: TradeGap | CatchUp) -> None:
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            self._dropped += 1
            log.error("backfill queue full; request dropped", extra={"request": repr(request)})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with self._scope:
            while True:
                request = await self._receive.receive()
                self._requests += 1
                if isinstance(request, TradeGap):
                    await self._fill_gap(request)
                else:
                    await self._catch_up(request)

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
        recovery = exchanges.venue(gap.exchange).trade_recovery(gap.market)
        last_missing = gap.next_seen - 1
        reason = f"{recovery.id_name} {gap.first_missing}..{last_missing} missing"
        record = self._ledger.open(gap.exchange, gap.symbol, "trades", reason, start=gap.since_ts)
        client = self._clients.get((gap.exchange, gap.market))
        if client is None or gap.next_seen - gap.first_missing > recovery.max_gap:
            why = "no REST endpoint" if client is None else "gap too wide to fetch"
            self._ledger.close(
                msgspec.structs.replace(record, reason=f"{reason}; not backfilled: {why}"), end=gap.until_ts
            )
            return
        recovered = 0
        try:
            async for page in exchanges.venue(gap.exchange).fill_gap(gap, self._fetch(client)):
                await self._trades.publish(page)
                recovered += len(page)
        except (RestError, ValueError) as exc:
            self._failed += 1
            log.error("backfill failed", extra={"symbol": gap.symbol, "error": str(exc)})
            record = msgspec.structs.replace(record, reason=f"{reason}; backfill failed: {exc}")
        self._recovered += recovered
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
                self._failed += 1
                log.error("backfill failed", extra={"symbol": symbol, "error": str(exc)})
                record = msgspec.structs.replace(record, reason=f"{record.reason}; backfill failed: {exc}")
            self._recovered += recovered
            self._ledger.close(record, recovered=recovered)
