"""The backfiller off the happy path, against the simulator's REST API: paging past 1000 trades, a gap too
wide to fetch, no REST endpoint, retries exhausted, a full queue, and a backfiller that ends mid-request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import attrs
import trio

from marketflow.exchanges.base import TradeGap
from marketflow.exchanges.binance import MAX_GAP as MAX_BINANCE_GAP
from marketflow.model import GapRecord, Trade
from marketflow.pipeline.backfill import ATTEMPTS, Backfiller, BackfillQueue, CatchUp
from marketflow.pipeline.gaps import GapLedger
from marketflow.pipeline.rest import RestClient, WeightBudget
from marketflow.runtime.bus import Bus, Overflow
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.http import HttpRequest, HttpResponse
from tests.conftest import wait_for

AGG_TRADES = "/api/v3/aggTrades"


@attrs.define
class Rig:
    sim: SimServer
    client: RestClient
    ledger: GapLedger
    queue: BackfillQueue
    bus: Bus[Trade]
    published: list[Trade]
    first_id: int
    """The oldest aggregate id the simulator's BTCUSDT spot tape holds (3000 trades from it)."""

    def backfiller(self, clients: dict[tuple[str, str], RestClient] | None = None) -> Backfiller:
        clients = {("binance", "spot"): self.client} if clients is None else clients
        return Backfiller(self.queue, self.bus, self.ledger, clients, {})

    def gap(self, first_missing: int, next_seen: int, since_ts: int = 1_000) -> TradeGap:
        return TradeGap("binance", "spot", "BTC-USDT", "BTCUSDT", first_missing, next_seen, since_ts, 2_000)

    async def worked_off(self, requests: int) -> None:
        await wait_for(lambda: self.queue.requests == requests and self.queue.queued == 0)
        await wait_for(lambda: not self.queue.in_hand)

    def trade_records(self) -> list[GapRecord]:
        return [r for r in self.ledger.query() if r.channel == "trades"]


@asynccontextmanager
async def rig(*, capacity: int = 16) -> AsyncIterator[Rig]:
    sim = SimServer(SimConfig(seed=71))
    tape = sim.market.tape("spot", "BTCUSDT", "binance")
    rows = tape.take(3000, int(time.time() * 1000))
    tape.record(rows)
    ledger = GapLedger(None)
    bus: Bus[Trade] = Bus("trades")
    subscription = bus.subscribe("test", 10_000, Overflow.BLOCK)
    published: list[Trade] = []

    async def collect() -> None:
        with subscription.receiver() as receiver:
            async for batch in receiver:
                published.extend(batch)

    with trio.fail_after(60):  # virtual seconds: a test that would hang fails at once
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            nursery.start_soon(collect)
            client = RestClient(sim.binance_rest_base("spot"), WeightBudget(6000))
            try:
                yield Rig(
                    sim,
                    client,
                    ledger,
                    BackfillQueue(ledger, capacity=capacity),
                    bus,
                    published,
                    int(rows[0][0]),
                )
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()


async def test_a_gap_of_2500_trades_is_fetched_in_pages_of_1000(autojump_clock: trio.abc.Clock) -> None:
    async with rig() as r, trio.open_nursery() as nursery:
        await nursery.start(r.backfiller().run)
        first, end = r.first_id + 100, r.first_id + 2600
        r.queue.request_trade_gaps([r.gap(first, end)])
        await r.worked_off(1)
        await wait_for(lambda: len(r.published) == 2500)
        nursery.cancel_scope.cancel()
    assert [int(t.id) for t in r.published] == list(range(first, end))  # every id once, in order
    truth = {
        t.id: (Decimal(t.price), Decimal(t.size))
        for t in r.sim.generated_trades("binance", "spot", "BTCUSDT")
    }
    assert all((t.price, t.amount) == truth[t.id] for t in r.published)
    assert r.client.requests == 3  # fromId = first, first + 1000, first + 2000
    (record,) = r.trade_records()
    assert record.reason == f"aggregate trade ids {first}..{end - 1} missing"
    assert (record.recovered, record.start, record.end) == (2500, 1_000, 2_000)
    assert (r.queue.recovered, r.queue.failed) == (2500, 0)


async def test_a_gap_too_wide_is_recorded_and_not_fetched(autojump_clock: trio.abc.Clock) -> None:
    async with rig() as r, trio.open_nursery() as nursery:
        await nursery.start(r.backfiller().run)
        r.queue.request_trade_gaps([r.gap(10, 10 + MAX_BINANCE_GAP + 1)])
        await r.worked_off(1)
        nursery.cancel_scope.cancel()
    (record,) = r.trade_records()
    assert (
        record.reason
        == f"aggregate trade ids 10..{10 + MAX_BINANCE_GAP} missing; not backfilled: gap too wide to fetch"
    )
    assert (record.end, record.recovered) == (2_000, 0)
    assert r.client.requests == 0 and r.published == []


async def test_without_a_rest_endpoint_gaps_and_catch_ups_are_recorded_as_not_backfilled(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with rig() as r, trio.open_nursery() as nursery:
        await nursery.start(r.backfiller(clients={}).run)
        r.queue.request_trade_gaps([r.gap(r.first_id + 5, r.first_id + 9)])
        opened = r.ledger.open("bybit", "BTC-USDT", "trades", "disconnected", start=5_000)
        r.queue.request_catch_up(
            CatchUp("bybit-spot", "bybit", "spot", (("BTCUSDT", "BTC-USDT"),), (opened,), 5_000)
        )
        await r.worked_off(2)
        nursery.cancel_scope.cancel()
    by_exchange = {rec.exchange: rec for rec in r.trade_records()}
    assert by_exchange["binance"].reason.endswith("; not backfilled: no REST endpoint")
    assert by_exchange["bybit"].reason == "disconnected; not backfilled: no REST endpoint"
    assert all(rec.end is not None for rec in by_exchange.values())
    assert r.published == []


async def test_retries_exhausted_records_the_failure_and_the_next_request_is_worked(
    autojump_clock: trio.abc.Clock,
) -> None:
    calls: list[float] = []

    async def broken(request: HttpRequest) -> HttpResponse:
        calls.append(trio.current_time())
        return HttpResponse(500, b'{"code":-1000,"msg":"internal error"}')

    async with rig() as r, trio.open_nursery() as nursery:
        r.sim.add_rest_route(AGG_TRADES, broken)
        await nursery.start(r.backfiller().run)
        r.queue.request_trade_gaps(
            [r.gap(r.first_id + 5, r.first_id + 9), r.gap(1, 2 + MAX_BINANCE_GAP, 1_500)]
        )
        await r.worked_off(2)
        nursery.cancel_scope.cancel()
    assert len(calls) == ATTEMPTS
    # Between attempts a full-jitter backoff: the n-th wait is at most 0.5 s * 2**n (virtual time).
    waits = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(0 < wait <= 0.5 * 2**n for n, wait in enumerate(waits)), waits
    failed, too_wide = sorted(r.trade_records(), key=lambda rec: "too wide" in rec.reason)
    assert "; backfill failed: GET " in failed.reason and "HTTP 500" in failed.reason
    assert (failed.end, failed.recovered) == (2_000, 0)
    assert too_wide.reason.endswith("not backfilled: gap too wide to fetch")
    assert (r.queue.failed, r.queue.recovered) == (1, 0) and r.published == []


async def test_a_full_queue_drops_the_request_and_the_ledger_says_so(autojump_clock: trio.abc.Clock) -> None:
    async with rig(capacity=1) as r:
        r.queue.request_trade_gaps([r.gap(100, 110), r.gap(200, 210, 1_500)])  # nobody works the queue yet
        opened = r.ledger.open("bybit", "ETH-USDT", "trades", "disconnected", start=7_000)
        r.queue.request_catch_up(
            CatchUp("bybit-spot", "bybit", "spot", (("ETHUSDT", "ETH-USDT"),), (opened,), 7_000)
        )
        assert (r.queue.queued, r.queue.dropped) == (1, 2)
        dropped = {rec.exchange: rec for rec in r.trade_records()}
        assert (
            dropped["binance"].reason
            == "aggregate trade ids 200..209 missing; not backfilled: backfill queue full"
        )
        assert (dropped["binance"].start, dropped["binance"].end) == (1_500, 2_000)
        assert dropped["bybit"].reason == "disconnected; not backfilled: backfill queue full"
        assert dropped["bybit"].end is not None
        # The request that was kept is still worked off.
        async with trio.open_nursery() as nursery:
            await nursery.start(r.backfiller().run)
            await r.worked_off(1)
            nursery.cancel_scope.cancel()
    assert r.queue.dropped == 2


async def test_a_new_backfiller_closes_the_record_its_predecessor_left_open(
    autojump_clock: trio.abc.Clock,
) -> None:
    release = trio.Event()
    asked = trio.Event()

    async def held(request: HttpRequest) -> HttpResponse:
        asked.set()
        await release.wait()
        return HttpResponse(500, b"{}")

    async with rig() as r:
        r.sim.add_rest_route(AGG_TRADES, held)
        r.queue.request_trade_gaps([r.gap(r.first_id + 5, r.first_id + 9)])
        async with trio.open_nursery() as nursery:
            await nursery.start(r.backfiller().run)
            await asked.wait()
            nursery.cancel_scope.cancel()  # the backfiller ends (a crash, or a stop) mid-request
        (record,) = r.trade_records()
        assert record.end is None and len(r.queue.in_hand) == 1
        async with trio.open_nursery() as nursery:
            await nursery.start(r.backfiller().run)
            nursery.cancel_scope.cancel()
        release.set()
    (record,) = r.trade_records()
    assert record.reason.endswith("missing; not backfilled: interrupted") and record.end is not None
    assert r.queue.in_hand == []
