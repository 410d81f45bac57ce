"""Actors of the market-data channels: the keeper that merges the bus into `LiveMarketData` and hands rows
to storage, the REST poller for data a venue gives only over REST (`Market.polls`), and the plant the
daemon keeps them and their queues in.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from marketflow.exchanges.base import Decoded, Market, RestPoll
from marketflow.model import DerivativesTick, Liquidation, MarketData, now_us
from marketflow.pipeline.market_data import Emitted, LiveMarketData, MarketDataStatistics, Quote
from marketflow.pipeline.rest import RestClient, RestError
from marketflow.runtime.bus import Bus, Overflow, Subscription, receive_batches
from marketflow.runtime.sink import RecordQueue, RecordSink
from marketflow.runtime.spill import SpillFactory

log = logging.getLogger("marketflow.market_data")

Submit = Callable[[list[Any]], None]


class MarketDataKeeper:
    """Drains the market-data bus into the live state; samples, quotes and liquidations go to `submit`.

    Every `sample_interval_s` it also closes the sample buckets the clock has left, so a symbol that went
    quiet still gets its last row. When the bus closes it flushes every pending sample and returns."""

    def __init__(
        self,
        subscription: Subscription[MarketData],
        live: LiveMarketData,
        submit: Callable[[Emitted], None],
        *,
        name: str = "market_data",
    ) -> None:
        self.name = name
        self._subscription = subscription
        self._live = live
        self._submit = submit

    def statistics(self) -> MarketDataStatistics:
        return self._live.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        live = self._live
        with self._subscription.receiver() as receiver:
            async with trio.open_nursery() as nursery:
                # The clock's own task: a wait for the bus arms no timeout (a cancel scope per wake-up
                # cost more than the wake-up's records on a busy feed).
                nursery.start_soon(self._close_on_the_clock, live.interval_us / 1_000_000)
                task_status.started()
                while True:
                    try:
                        batches = await receive_batches(receiver)
                    except trio.EndOfChannel:
                        self._hand(Emitted(samples=live.flush()))
                        nursery.cancel_scope.cancel()
                        return
                    for batch in batches:
                        self._hand(live.apply(batch))
                    self._close_buckets()

    async def _close_on_the_clock(self, period: float) -> None:
        while True:
            await trio.sleep(period)
            self._close_buckets()

    def _close_buckets(self) -> None:
        live = self._live
        # One interval of grace: the venue's clock may run a little ahead of ours.
        closed = live.close_buckets(now_us() - live.interval_us)
        if closed:
            self._hand(Emitted(samples=closed))

    def _hand(self, emitted: Emitted) -> None:
        if emitted.samples or emitted.quotes or emitted.liquidations:
            self._submit(emitted)


@attrs.frozen
class PollerStatistics:
    name: str
    interval_s: float
    rounds: int
    records: int
    errors: int
    last_error: str | None


def poll_interval(poll: RestPoll, symbols: int, weight: int, budget_limit: int, window_s: float) -> float:
    """The declared interval, stretched so a round of `symbols` requests spends at most the poll's share
    of a budget of `budget_limit` weight per `window_s`."""
    allowed = budget_limit * poll.budget_share
    if allowed <= 0:
        raise ValueError(f"a REST budget of {budget_limit} leaves nothing for polling")
    return max(poll.interval_s, symbols * weight * window_s / allowed)


class RestPoller:
    """Asks one feed's symbols for `poll` every interval and publishes what `poll.parse` makes.

    A failed request (network, HTTP error, answer not understood) is counted and logged; the next round
    asks again. The client's weight budget paces the requests on top of the interval."""

    def __init__(
        self,
        name: str,
        poll: RestPoll,
        symbols: Sequence[tuple[str, str]],
        client: RestClient,
        bus: Bus[MarketData],
    ) -> None:
        self.name = name
        self._poll = poll
        self._symbols = tuple(symbols)
        self._client = client
        self._bus = bus
        weight = max((poll.request(native).weight for native, _ in self._symbols), default=1)
        budget = client.budget
        self.interval_s = poll_interval(poll, len(self._symbols), weight, budget.limit, budget.window_s)
        self._rounds = 0
        self._records = 0
        self._errors = 0
        self._last_error: str | None = None
        self._scope = trio.CancelScope()

    def request_stop(self) -> None:
        """Stop now: a poll holds nothing that must be finished."""
        self._scope.cancel()

    def statistics(self) -> PollerStatistics:
        return PollerStatistics(
            self.name, self.interval_s, self._rounds, self._records, self._errors, self._last_error
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with self._scope:
            while True:
                started = trio.current_time()
                await self.poll_once()
                await trio.sleep_until(started + self.interval_s)

    async def poll_once(self) -> None:
        """One round over every symbol; publishes what it got."""
        out = Decoded()
        for native, symbol in self._symbols:
            request = self._poll.request(native)
            try:
                body = await self._client.get(request.path, request.params, request.weight)
                self._poll.parse(body, symbol, now_us(), out)
            except (RestError, ValueError) as exc:
                self._errors += 1
                self._last_error = f"{symbol}: {exc}"
                log.warning("REST poll failed", extra={"poller": self.name, "error": self._last_error})
        self._rounds += 1
        records: list[MarketData] = [*out.tickers, *out.derivatives, *out.liquidations]
        if records:
            self._records += len(records)
            await self._bus.publish(records)


@attrs.frozen
class PollPlan:
    """A REST poll a feed's market declares (`Market.polls`), run as its own supervised child."""

    name: str
    feed: str
    exchange: str
    market: str
    poll: RestPoll
    symbols: tuple[tuple[str, str], ...]  # (native, normalized)


class MarketDataPlant:
    """What the SPEC §12 channels keep across actor restarts: the market-data bus and its subscription,
    the live state, the record queues of `derivatives`, `liquidations` and `quotes`, and the planned REST
    polls. The daemon builds its children from it (`sinks`, `keeper`, `poller`)."""

    def __init__(
        self,
        store: object,
        capacity: int,
        sample_interval_s: float,
        store_quotes: bool,
        *,
        publish: bool = False,
        spills: SpillFactory | None = None,
        records_max: int = 100_000,
    ) -> None:
        """`publish`: the rows are drained by a publisher (a NATS collector), not by sinks into `store`;
        `spills`: where rows not saved (or published) yet go past the queues' memory bound."""
        self.bus: Bus[MarketData] = Bus("market_data")
        self._subscription = self.bus.subscribe("market_data", capacity, Overflow.BLOCK)
        self.live = LiveMarketData(sample_interval_s, store_quotes=store_quotes)
        self.publish = publish
        self._writers: dict[str, Any] = {
            "derivatives": getattr(store, "write_derivatives", None),
            "liquidations": getattr(store, "write_liquidations", None),
            "quotes": getattr(store, "write_quotes", None) if store_quotes else None,
        }
        self.derivatives: RecordQueue[DerivativesTick] = RecordQueue(
            "derivatives",
            capacity=records_max,
            key=lambda r: (r.exchange, r.symbol, r.ts),  # a replaced sample of the same instant wins
            accept=publish or self._writers["derivatives"] is not None,
            spill=None if spills is None else spills("derivatives", DerivativesTick),
        )
        self.liquidations: RecordQueue[Liquidation] = RecordQueue(
            "liquidations",
            capacity=records_max,
            key=lambda r: (r.exchange, r.symbol, r.id),
            accept=publish or self._writers["liquidations"] is not None,
            spill=None if spills is None else spills("liquidations", Liquidation),
        )
        self.quotes: RecordQueue[Quote] = RecordQueue(
            "quotes",
            capacity=records_max,
            accept=(publish and store_quotes) or self._writers["quotes"] is not None,
            spill=None if spills is None else spills("quotes", Quote),
        )
        self.polls: dict[str, PollPlan] = {}

    def plan_polls(
        self, feed: str, exchange: str, market: Market, channels: Sequence[str], by_native: dict[str, str]
    ) -> list[str]:
        """Register the polls of a feed (those of its market for channels it carries); their names."""
        names = []
        for poll in market.polls:
            if poll.channel in channels:
                name = f"{feed}/poll-{poll.channel}"
                self.polls[name] = PollPlan(name, feed, exchange, market.name, poll, tuple(by_native.items()))
                names.append(name)
        return names

    def drop_polls(self, feed: str) -> list[str]:
        """Forget the polls of a feed; their names (children to remove)."""
        names = [name for name, plan in self.polls.items() if plan.feed == feed]
        for name in names:
            del self.polls[name]
        return names

    def sinks(self) -> list[tuple[str, Callable[[], RecordSink[Any]]]]:
        """(name, factory) of a sink per table the store can write."""
        queues: dict[str, RecordQueue[Any]] = {
            "derivatives": self.derivatives,
            "liquidations": self.liquidations,
            "quotes": self.quotes,
        }
        return [
            (name, functools.partial(RecordSink, name, self._writers[name], queue=queue))
            for name, queue in queues.items()
            if queue.accept and not self.publish
        ]

    def keeper(self) -> MarketDataKeeper:
        return MarketDataKeeper(self._subscription, self.live, self._submit)

    def _submit(self, emitted: Emitted) -> None:
        self.derivatives.submit(emitted.samples)
        self.liquidations.submit(emitted.liquidations)
        self.quotes.submit(emitted.quotes)

    def poller(self, name: str, client: RestClient) -> RestPoller:
        plan = self.polls[name]
        return RestPoller(name, plan.poll, plan.symbols, client, self.bus)
