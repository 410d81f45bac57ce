"""Supervisor behaviour under trio's autojump clock: every time asserted here is exact."""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

import attrs
import pytest
import trio

from marketflow.runtime import (
    Actor,
    ChildSpec,
    ChildStatistics,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    SupervisorPolicy,
)

P = ParamSpec("P")


def time_boxed(seconds: float) -> Callable[[Callable[P, Awaitable[None]]], Callable[P, Awaitable[None]]]:
    """Fail a test that would hang: ``trio.fail_after(seconds)`` around the whole body.

    Under ``autojump_clock`` the seconds are virtual, so a deadlock fails at once.
    """

    def decorate(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
        @functools.wraps(test)
        async def boxed(*args: P.args, **kwargs: P.kwargs) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return boxed

    return decorate


class MaxRandom(random.Random):
    """Always draws the jitter ceiling, so backoff delays are initial_s * 2**n capped at max_s."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Boom(Exception):
    pass


@attrs.define
class Journal:
    """What the actors did, and when."""

    entries: list[tuple[float, str, str]] = attrs.field(factory=list)

    def note(self, who: str, what: str) -> None:
        self.entries.append((trio.current_time(), who, what))

    def times(self, who: str, what: str) -> list[float]:
        return [t for t, w, e in self.entries if w == who and e == what]

    def events(self, *whats: str) -> list[tuple[float, str, str]]:
        return [entry for entry in self.entries if entry[2] in whats]


@attrs.frozen
class ProbeStatistics:
    ticks: int


@attrs.define(eq=False)
class Probe:
    """A scripted actor.

    Runs ``startup_s``, then fails (``startup_error``) or calls started(); then runs until
    ``crash_after_s`` (raises Boom), ``return_after_s`` (returns) or request_stop(), after which
    it takes ``stop_s`` to finish. With ``honours_stop=False`` it ignores request_stop().
    It ticks once per second while running.
    """

    name: str
    journal: Journal
    startup_s: float = 0.0
    startup_error: Exception | None = None
    crash_after_s: float | None = None
    return_after_s: float | None = None
    honours_stop: bool = True
    stop_s: float = 0.0
    skip_started: bool = False
    ticks: int = 0
    _stop: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.journal.note(self.name, "run")
        try:
            await trio.sleep(self.startup_s)
            if self.startup_error is not None:
                self.journal.note(self.name, "startup_error")
                raise self.startup_error
            if self.skip_started:
                return
            task_status.started()
            self.journal.note(self.name, "started")
            end_after = self.crash_after_s if self.crash_after_s is not None else self.return_after_s
            with trio.move_on_after(math.inf if end_after is None else end_after) as timer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tick)
                    if self.honours_stop:
                        await self._stop.wait()
                    else:
                        await trio.sleep_forever()
                    nursery.cancel_scope.cancel()
            if timer.cancelled_caught:
                if self.crash_after_s is not None:
                    self.journal.note(self.name, "crash")
                    raise Boom(f"{self.name} crashed")
                self.journal.note(self.name, "return")
                return
            await trio.sleep(self.stop_s)
            self.journal.note(self.name, "stopped")
        except BaseException as exc:
            # Test bookkeeping only: note a cancellation (maybe grouped by the tick nursery), re-raise.
            grouped = isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None
            if isinstance(exc, trio.Cancelled) or grouped:
                self.journal.note(self.name, "cancelled")
            raise

    async def _tick(self) -> None:
        while True:
            await trio.sleep(1)
            self.ticks += 1

    def request_stop(self) -> None:
        self.journal.note(self.name, "request_stop")
        self._stop.set()

    def statistics(self) -> ProbeStatistics:
        return ProbeStatistics(ticks=self.ticks)


class ProbeFactory:
    """Makes Probes from a plan: the n-th start uses plans[n] (the last plan repeats)."""

    def __init__(self, journal: Journal, name: str, *plans: dict[str, Any]) -> None:
        self.journal = journal
        self.name = name
        self.plans = plans or ({},)
        self.instances: list[Probe] = []

    def __call__(self) -> Probe:
        plan = self.plans[min(len(self.instances), len(self.plans) - 1)]
        probe = Probe(self.name, self.journal, **plan)
        self.instances.append(probe)
        return probe


def spec(factory: ProbeFactory, *, on_stop: bool = False, **kwargs: Any) -> ChildSpec:
    hook = (lambda: factory.journal.note(factory.name, "on_stop")) if on_stop else None
    return ChildSpec(name=factory.name, factory=factory, on_stop=hook, **kwargs)


def child(supervisor: Supervisor, name: str) -> ChildStatistics:
    (found,) = [c for c in supervisor.statistics().children if c.name == name]
    return found


POLICY = SupervisorPolicy(backoff_initial_s=1.0, backoff_max_s=4.0, circuit_failures=100)


def boom() -> Boom:
    return Boom("no luck")


@time_boxed(1000)
async def test_restart_delays_grow_with_backoff_and_reset_once_started(
    autojump_clock: trio.abc.Clock,
) -> None:
    journal = Journal()
    factory = ProbeFactory(
        journal,
        "c",
        {"startup_error": boom()},
        {"startup_error": boom()},
        {"startup_error": boom()},
        {"startup_error": boom()},
        {"crash_after_s": 2.0},
        {"startup_error": boom()},
        {},
    )
    sup = Supervisor("sup", POLICY, [spec(factory)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(0.5)
        stats = child(sup, "c")
        assert (stats.state, stats.next_start_at, stats.restarts, stats.failures) == ("backoff", 1.0, 1, 1)
        assert stats.last_error == "Boom: no luck"
        assert stats.actor is None

        await trio.sleep_until(20.5)
        # Startup failures: delays 1, 2, 4, then capped at 4. The fifth start runs (and resets
        # the backoff) and crashes after 2 s, so the next delay is 1 again, then 2.
        assert journal.times("c", "run") == [0.0, 1.0, 3.0, 7.0, 11.0, 14.0, 16.0]
        assert journal.times("c", "started") == [11.0, 16.0]
        stats = child(sup, "c")
        assert (stats.state, stats.started_at, stats.restarts, stats.failures) == ("running", 16.0, 6, 6)
        assert stats.next_start_at is None
        assert stats.actor == ProbeStatistics(ticks=4)
        await sup.stop()


@time_boxed(1000)
async def test_circuit_opens_then_allows_one_trial_per_open_period(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    failing = {"startup_error": boom()}
    factory = ProbeFactory(journal, "c", failing, failing, failing, {})
    policy = SupervisorPolicy(
        backoff_initial_s=1.0,
        backoff_max_s=1.0,
        circuit_failures=2,
        circuit_window_s=10.0,
        circuit_open_s=30.0,
    )
    sup = Supervisor("sup", policy, [spec(factory)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(0.5)
        assert (child(sup, "c").state, child(sup, "c").circuit) == ("backoff", "closed")

        # Second failure at 1.0 opens the circuit until 31.0.
        await trio.sleep_until(2)
        stats = child(sup, "c")
        assert (stats.state, stats.circuit, stats.next_start_at) == ("circuit_open", "open", 31.0)

        # The single trial at 31.0 fails: open again until 61.0.
        await trio.sleep_until(31.5)
        stats = child(sup, "c")
        assert (stats.state, stats.circuit, stats.next_start_at) == ("circuit_open", "open", 61.0)

        await trio.sleep_until(61.5)
        stats = child(sup, "c")
        assert (stats.state, stats.circuit, stats.started_at) == ("running", "closed", 61.0)
        assert journal.times("c", "run") == [0.0, 1.0, 31.0, 61.0]
        await sup.stop()


@time_boxed(1000)
async def test_intensity_exceeded_escalates_after_stopping_children(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    crasher = ProbeFactory(journal, "crasher", {"crash_after_s": 0.5})
    sibling = ProbeFactory(journal, "sibling", {"stop_s": 0.25})
    policy = SupervisorPolicy(backoff_initial_s=1.0, backoff_max_s=1.0, intensity=2, period_s=10.0)
    sup = Supervisor("sup", policy, [spec(sibling, on_stop=True), spec(crasher)], rng=MaxRandom())

    with pytest.raises(SupervisorEscalation) as info:
        await sup.run()

    # Crashes at 0.5 and 2.0 are restarts 1 and 2; the crash at 3.5 would be the third in 10 s.
    assert journal.times("crasher", "crash") == [0.5, 2.0, 3.5]
    assert journal.times("sibling", "request_stop") == [3.5]
    assert journal.times("sibling", "on_stop") == [3.5]
    assert journal.times("sibling", "stopped") == [3.75]
    assert trio.current_time() == 3.75
    escalation = info.value
    assert (escalation.supervisor, escalation.child, escalation.restarts, escalation.period_s) == (
        "sup",
        "crasher",
        3,
        10.0,
    )
    assert isinstance(escalation.__cause__, Boom)
    stats = sup.statistics()
    assert [(c.name, c.state) for c in stats.children] == [("sibling", "stopped"), ("crasher", "failed")]
    assert stats.restarts_total == 2


@time_boxed(1000)
async def test_escalation_reaches_a_surrounding_nursery_as_a_group(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    crasher = ProbeFactory(journal, "crasher", {"crash_after_s": 1.0})
    sup = Supervisor("sup", SupervisorPolicy(intensity=0), [spec(crasher)])

    with pytest.RaisesGroup(pytest.RaisesExc(SupervisorEscalation, match="'crasher'")):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)

    assert trio.current_time() == 1.0


@time_boxed(1000)
async def test_restarts_spread_wider_than_the_period_do_not_escalate(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    crasher = ProbeFactory(journal, "crasher", {"crash_after_s": 1.0})
    policy = SupervisorPolicy(
        backoff_initial_s=1.0, backoff_max_s=1.0, circuit_failures=100, intensity=1, period_s=2.0
    )
    sup = Supervisor("sup", policy, [spec(crasher)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(19.5)
        # A crash every 2 s: the previous restart leaves the 2 s window exactly when the next comes.
        assert journal.times("crasher", "crash") == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 17.0, 19.0]
        assert child(sup, "crasher").state == "backoff"
        await sup.stop()


@time_boxed(1000)
async def test_crashing_child_leaves_its_sibling_untouched(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    counter = ProbeFactory(journal, "counter")
    crasher = ProbeFactory(journal, "crasher", {"crash_after_s": 0.5}, {"startup_error": boom()})
    policy = SupervisorPolicy(backoff_initial_s=0.1, backoff_max_s=0.1, circuit_failures=1000)
    sup = Supervisor("sup", policy, [spec(counter), spec(crasher)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(10.5)
        assert len(crasher.instances) > 50
        assert len(counter.instances) == 1
        assert counter.instances[0].ticks == 10
        stats = child(sup, "counter")
        assert (stats.state, stats.restarts, stats.failures, stats.started_at) == ("running", 0, 0, 0.0)
        await sup.stop()


@time_boxed(1000)
async def test_stop_goes_in_reverse_start_order_with_a_deadline_each(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a", {"stop_s": 1.0})
    b = ProbeFactory(journal, "b", {"honours_stop": False})
    c = ProbeFactory(journal, "c", {"stop_s": 0.5})
    sup = Supervisor(
        "sup",
        POLICY,
        [
            spec(a, on_stop=True),
            spec(b, on_stop=True, shutdown_timeout_s=3.0),
            spec(c, on_stop=True),
        ],
    )

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert journal.times("a", "started") == journal.times("c", "started") == [0.0]
        await trio.sleep_until(5)
        await sup.stop()
        assert trio.current_time() == 9.5

    assert journal.events("request_stop", "on_stop", "stopped", "cancelled") == [
        (5.0, "c", "request_stop"),
        (5.0, "c", "on_stop"),
        (5.5, "c", "stopped"),
        (5.5, "b", "request_stop"),
        (5.5, "b", "on_stop"),
        (8.5, "b", "cancelled"),  # ignored request_stop: cancelled at its 3 s deadline
        (8.5, "a", "request_stop"),
        (8.5, "a", "on_stop"),
        (9.5, "a", "stopped"),
    ]
    assert [(s.name, s.state, s.restarts, s.failures) for s in sup.statistics().children] == [
        ("a", "stopped", 0, 0),
        ("b", "stopped", 0, 0),
        ("c", "stopped", 0, 0),
    ]


@time_boxed(1000)
async def test_children_start_in_order_each_once_started(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a", {"startup_s": 1.0})
    b = ProbeFactory(journal, "b", {"startup_s": 2.0})
    sup = Supervisor("sup", POLICY, [spec(a), spec(b)])

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert trio.current_time() == 3.0
        assert journal.events("run", "started") == [
            (0.0, "a", "run"),
            (1.0, "a", "started"),
            (1.0, "b", "run"),
            (3.0, "b", "started"),
        ]
        await sup.stop()


@pytest.mark.parametrize(
    ("restart", "ending", "runs", "state"),
    [
        (Restart.PERMANENT, "crash_after_s", 2, "running"),
        (Restart.PERMANENT, "return_after_s", 2, "running"),
        (Restart.TRANSIENT, "crash_after_s", 2, "running"),
        (Restart.TRANSIENT, "return_after_s", 1, "stopped"),
        (Restart.TEMPORARY, "crash_after_s", 1, "failed"),
        (Restart.TEMPORARY, "return_after_s", 1, "stopped"),
    ],
)
@time_boxed(1000)
async def test_restart_types(
    autojump_clock: trio.abc.Clock, restart: Restart, ending: str, runs: int, state: str
) -> None:
    journal = Journal()
    factory = ProbeFactory(journal, "c", {ending: 1.0}, {})
    sup = Supervisor("sup", POLICY, [spec(factory, restart=restart)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(5)
        # The first run ends at 1.0; a restart comes after the 1 s backoff.
        assert journal.times("c", "run") == [0.0, 2.0][:runs]
        stats = child(sup, "c")
        assert (stats.state, stats.restarts) == (state, runs - 1)
        assert stats.failures == (1 if ending == "crash_after_s" else 0)
        await sup.stop()


@time_boxed(1000)
async def test_child_returning_without_started_is_a_failure(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    factory = ProbeFactory(journal, "c", {"skip_started": True}, {})
    sup = Supervisor("sup", POLICY, [spec(factory, restart=Restart.TRANSIENT)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        stats = child(sup, "c")
        assert (stats.state, stats.failures) == ("backoff", 1)
        assert stats.last_error is not None
        assert stats.last_error.startswith("RuntimeError: child 'c' returned without calling")
        await trio.sleep_until(1.5)
        assert journal.times("c", "started") == [1.0]
        await sup.stop()


@time_boxed(1000)
async def test_factory_error_is_a_failure(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    calls: list[float] = []

    def factory() -> Actor:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise ValueError("bad config")
        return Probe("c", journal)

    sup = Supervisor("sup", POLICY, [ChildSpec("c", factory)], rng=MaxRandom())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert child(sup, "c").last_error == "ValueError: bad config"
        await trio.sleep_until(2)
        assert calls == [0.0, 1.0]
        assert child(sup, "c").state == "running"
        await sup.stop()


@time_boxed(1000)
async def test_exception_group_from_a_child_is_a_failure(autojump_clock: trio.abc.Clock) -> None:
    class GroupRaiser:
        name = "g"

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep(1)
                raise Boom("inner")

        def statistics(self) -> None:
            return None

    sup = Supervisor("sup", POLICY, [ChildSpec("g", GroupRaiser)], rng=MaxRandom())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(1.5)
        stats = child(sup, "g")
        assert (stats.state, stats.failures, stats.next_start_at) == ("backoff", 1, 2.0)
        assert stats.last_error is not None
        assert stats.last_error.startswith("ExceptionGroup: ")
        await sup.stop()


@pytest.mark.parametrize("strategy", [Strategy.REST_FOR_ONE, Strategy.ONE_FOR_ONE])
@time_boxed(1000)
async def test_rest_for_one_restarts_later_siblings_only(
    autojump_clock: trio.abc.Clock, strategy: Strategy
) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    b = ProbeFactory(journal, "b", {"crash_after_s": 1.0}, {})
    c = ProbeFactory(journal, "c", {"stop_s": 0.25}, {"startup_s": 0.5})
    d = ProbeFactory(journal, "d", {"stop_s": 0.25})
    policy = SupervisorPolicy(strategy=strategy, backoff_initial_s=2.0, backoff_max_s=2.0)
    sup = Supervisor("sup", policy, [spec(a), spec(b), spec(c, on_stop=True), spec(d)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(1.3)
        if strategy is Strategy.REST_FOR_ONE:
            # d is stopped and waits for b and c; c is finishing gracefully.
            assert [(s.name, s.state) for s in sup.statistics().children] == [
                ("a", "running"),
                ("b", "backoff"),
                ("c", "stopping"),
                ("d", "starting"),
            ]
        await trio.sleep_until(10)
        await sup.stop()

    run_events = [
        e for e in journal.events("run", "started", "request_stop", "on_stop", "stopped") if e[0] < 10
    ]
    if strategy is Strategy.REST_FOR_ONE:
        assert run_events == [
            (0.0, "a", "run"),
            (0.0, "a", "started"),
            (0.0, "b", "run"),
            (0.0, "b", "started"),
            (0.0, "c", "run"),
            (0.0, "c", "started"),
            (0.0, "d", "run"),
            (0.0, "d", "started"),
            # b crashes at 1.0: d, then c, are stopped gracefully
            (1.0, "d", "request_stop"),
            (1.25, "d", "stopped"),
            (1.25, "c", "request_stop"),
            (1.25, "c", "on_stop"),
            (1.5, "c", "stopped"),
            # b comes back after its 2 s backoff, then c, and d once c is running
            (3.0, "b", "run"),
            (3.0, "b", "started"),
            (3.0, "c", "run"),
            (3.5, "c", "started"),
            (3.5, "d", "run"),
            (3.5, "d", "started"),
        ]
        assert [(len(f.instances), child(sup, f.name).restarts) for f in (a, b, c, d)] == [
            (1, 0),
            (2, 1),
            (2, 1),
            (2, 1),
        ]
        assert sup.statistics().restarts_total == 3
    else:
        assert [len(f.instances) for f in (a, b, c, d)] == [1, 2, 1, 1]
        assert journal.times("b", "run") == [0.0, 3.0]
        assert journal.times("d", "request_stop") == [10.0]
        assert journal.times("c", "request_stop") == [10.25]


@time_boxed(1000)
async def test_rest_for_one_later_child_waits_for_an_earlier_one_that_keeps_failing(
    autojump_clock: trio.abc.Clock,
) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a", {"startup_error": boom()}, {"startup_error": boom()}, {})
    b = ProbeFactory(journal, "b")
    policy = SupervisorPolicy(strategy=Strategy.REST_FOR_ONE, backoff_initial_s=1.0, backoff_max_s=8.0)
    sup = Supervisor("sup", policy, [spec(a), spec(b)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        # run() does not wait for a broken predecessor: it is started once b waits.
        await nursery.start(sup.run)
        assert trio.current_time() == 0.0
        assert [(s.name, s.state) for s in sup.statistics().children] == [("a", "backoff"), ("b", "starting")]
        await trio.sleep_until(5)
        assert journal.events("run", "started") == [
            (0.0, "a", "run"),
            (1.0, "a", "run"),
            (3.0, "a", "run"),
            (3.0, "a", "started"),
            (3.0, "b", "run"),
            (3.0, "b", "started"),
        ]
        await sup.stop()


@time_boxed(1000)
async def test_rest_for_one_temporary_later_sibling_is_not_restarted(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a", {"crash_after_s": 1.0}, {})
    b = ProbeFactory(journal, "b")
    policy = SupervisorPolicy(strategy=Strategy.REST_FOR_ONE, backoff_initial_s=1.0, backoff_max_s=1.0)
    sup = Supervisor("sup", policy, [spec(a), spec(b, restart=Restart.TEMPORARY)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(5)
        assert journal.times("b", "request_stop") == [1.0]
        assert journal.times("b", "run") == [0.0]
        assert journal.times("a", "started") == [0.0, 2.0]
        assert child(sup, "b").state == "stopped"
        await sup.stop()


@time_boxed(1000)
async def test_add_child_while_running(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    slow = ProbeFactory(journal, "slow", {"startup_s": 0.5})
    broken = ProbeFactory(journal, "broken", {"startup_s": 0.25, "startup_error": boom()}, {})
    sup = Supervisor("sup", POLICY, [spec(a)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(1)

        await sup.add_child(spec(slow))
        assert trio.current_time() == 1.5
        assert child(sup, "slow").state == "running"

        # A failing start returns from add_child at the failure; the usual restart follows.
        await sup.add_child(spec(broken))
        assert trio.current_time() == 1.75
        stats = child(sup, "broken")
        assert (stats.state, stats.next_start_at) == ("backoff", 2.75)
        assert sup.child_names() == ["a", "slow", "broken"]

        with pytest.raises(ValueError, match="already has a child named 'a'"):
            await sup.add_child(spec(a))

        await trio.sleep_until(4)
        assert journal.times("broken", "started") == [2.75]
        await sup.stop()

    # Added children are stopped first: reverse start order includes them.
    assert [who for _, who, _ in journal.events("request_stop")] == ["broken", "slow", "a"]


@time_boxed(1000)
async def test_remove_child_stops_it_gracefully_and_forgets_it(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    b = ProbeFactory(journal, "b", {"stop_s": 2.0})
    sup = Supervisor("sup", POLICY, [spec(a), spec(b, on_stop=True)])

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(1)
        await sup.remove_child("b")
        assert trio.current_time() == 3.0
        assert journal.events("request_stop", "on_stop", "stopped") == [
            (1.0, "b", "request_stop"),
            (1.0, "b", "on_stop"),
            (3.0, "b", "stopped"),
        ]
        assert sup.child_names() == ["a"]
        assert [s.name for s in sup.statistics().children] == ["a"]
        with pytest.raises(KeyError):
            await sup.remove_child("b")
        await trio.sleep_until(10)
        assert len(b.instances) == 1
        await sup.stop()


@time_boxed(1000)
async def test_restart_child_restarts_at_once_and_resets_backoff(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    failing = {"startup_error": boom()}
    factory = ProbeFactory(journal, "c", failing, failing, failing, failing, {"stop_s": 0.5}, failing)
    sibling = ProbeFactory(journal, "sibling")
    policy = SupervisorPolicy(backoff_initial_s=10.0, backoff_max_s=1000.0)
    sup = Supervisor("sup", policy, [spec(factory), spec(sibling)], rng=MaxRandom())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(35)
        # Failed at 0, 10, 30: the next delay would be 40.
        assert child(sup, "c").next_start_at == 70.0

        await sup.restart_child("c")
        # Started again at once; a reset backoff makes the next delay 10 instead of 40.
        assert trio.current_time() == 35.0
        assert child(sup, "c").next_start_at == 45.0

        await trio.sleep_until(50)
        assert child(sup, "c").state == "running"
        await sup.restart_child("c")
        # Graceful stop (0.5 s) of the running actor, then a fresh one, failing again.
        assert trio.current_time() == 50.5
        stats = child(sup, "c")
        assert (stats.state, stats.next_start_at, stats.restarts) == ("backoff", 60.5, 7)
        assert journal.times("c", "run") == [0.0, 10.0, 30.0, 35.0, 45.0, 50.5]
        assert journal.times("c", "stopped") == [50.5]
        assert len(sibling.instances) == 1
        await sup.stop()


@time_boxed(1000)
async def test_statistics_show_starting_and_stopping(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a", {"startup_s": 2.0, "stop_s": 2.0})
    sup = Supervisor("sup", POLICY, [spec(a)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep_until(1)
        stats = child(sup, "a")
        assert (stats.state, stats.started_at, stats.actor) == ("starting", None, ProbeStatistics(ticks=0))

        await trio.sleep_until(4.5)
        stats = child(sup, "a")
        assert (stats.state, stats.started_at, stats.actor) == ("running", 2.0, ProbeStatistics(ticks=2))

        nursery.start_soon(sup.stop)
        await trio.sleep_until(5)
        assert child(sup, "a").state == "stopping"
        await trio.sleep_until(7)
        stats = child(sup, "a")
        assert (stats.state, stats.started_at, stats.actor) == ("stopped", None, None)
    assert sup.statistics().strategy is Strategy.ONE_FOR_ONE


@time_boxed(1000)
async def test_stop_while_a_child_is_still_starting(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    b = ProbeFactory(journal, "b", {"startup_s": 100.0})
    c = ProbeFactory(journal, "c")
    sup = Supervisor("sup", POLICY, [spec(a), spec(b, shutdown_timeout_s=2.0), spec(c)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep_until(1)
        await sup.stop()
        assert trio.current_time() == 3.0

    assert journal.events("run", "request_stop", "cancelled", "stopped") == [
        (0.0, "a", "run"),
        (0.0, "b", "run"),
        (1.0, "b", "request_stop"),
        (3.0, "b", "cancelled"),
        (3.0, "a", "request_stop"),
        (3.0, "a", "stopped"),
    ]
    assert len(c.instances) == 0


@time_boxed(5)
async def test_stop_before_run_makes_run_return_at_once() -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    sup = Supervisor("sup", POLICY, [spec(a)])
    await sup.stop()
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
    assert a.instances == []
    with pytest.raises(RuntimeError, match="only run once"):
        await sup.run()


@time_boxed(1000)
async def test_nested_supervisor_escalation_is_a_child_failure(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    worker = ProbeFactory(journal, "worker", {"crash_after_s": 1.0}, {})
    inners: list[Supervisor] = []

    def make_inner() -> Supervisor:
        inner = Supervisor("inner", SupervisorPolicy(intensity=0), [spec(worker, on_stop=True)])
        inners.append(inner)
        return inner

    outer = Supervisor("outer", POLICY, [ChildSpec("inner", make_inner)], rng=MaxRandom())
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run)
        await trio.sleep_until(3)
        stats = child(outer, "inner")
        assert (stats.state, stats.restarts, stats.started_at) == ("running", 1, 2.0)
        assert stats.last_error is not None
        assert stats.last_error.startswith("SupervisorEscalation: supervisor 'inner': child 'worker'")
        assert journal.times("worker", "run") == [0.0, 2.0]
        await outer.stop()

    # The outer stop reached the inner supervisor's child through request_stop().
    assert journal.times("worker", "request_stop") == [3.0]
    assert journal.times("worker", "stopped") == [3.0]
    assert len(inners) == 2


@time_boxed(1000)
async def test_a_failure_is_one_warning_with_its_retry(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal()
    factory = ProbeFactory(journal, "c", {"crash_after_s": 1.0}, {})
    sup = Supervisor("sup", POLICY, [spec(factory)], rng=MaxRandom())

    with caplog.at_level(logging.INFO, logger="marketflow.supervisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep_until(3)
            await sup.stop()

    records = [r for r in caplog.records if r.name == "marketflow.supervisor"]
    failures = [r for r in records if r.levelno == logging.WARNING]
    # One line a failure, with the reason and the next retry; the restart is in it, not a second line.
    first = failures[0]
    assert first.getMessage() == "child failed; restarting"
    assert (first.child, first.reason, first.retry_in_s, first.state) == (  # type: ignore[attr-defined]
        "c",
        "Boom: c crashed",
        1.0,
        "backoff",
    )
    assert first.exc_info is not None and first.exc_info[0] is Boom  # an unexpected error: its traceback
    assert not any("restarting child c" in r.getMessage() for r in records)


@time_boxed(1000)
async def test_children_added_before_run_start_with_it(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    b = ProbeFactory(journal, "b", {"startup_s": 1.0})
    sup = Supervisor("sup", POLICY, [spec(a)])
    await sup.add_child(spec(b))
    assert sup.child_names() == ["a", "b"]

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert trio.current_time() == 1.0
        assert [(s.name, s.state) for s in sup.statistics().children] == [("a", "running"), ("b", "running")]
        await sup.stop()
    with pytest.raises(RuntimeError, match="is stopped"):
        await sup.add_child(spec(ProbeFactory(journal, "c")))


@time_boxed(1000)
async def test_a_failing_stop_hook_does_not_keep_others_from_stopping(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal()
    a = ProbeFactory(journal, "a")
    b = ProbeFactory(journal, "b", {"honours_stop": False})

    def broken_hook() -> None:
        raise OSError("disk gone")

    sup = Supervisor("sup", POLICY, [spec(a), ChildSpec("b", b, shutdown_timeout_s=1.0, on_stop=broken_hook)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.stop()

    assert journal.events("request_stop", "cancelled", "stopped") == [
        (0.0, "b", "request_stop"),
        (1.0, "b", "cancelled"),
        (1.0, "a", "request_stop"),
        (1.0, "a", "stopped"),
    ]
    assert child(sup, "b").last_error == "OSError: disk gone"


@time_boxed(1000)
async def test_fail_child_ends_the_actor_as_a_failure_and_a_fresh_one_starts(
    autojump_clock: trio.abc.Clock,
) -> None:
    journal = Journal()
    factory = ProbeFactory(journal, "c")
    sup = Supervisor("sup", POLICY, [spec(factory)], rng=MaxRandom())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5)
        sup.fail_child("c", Boom("injected"))
        await trio.testing.wait_all_tasks_blocked()
        stats = child(sup, "c")
        assert (stats.state, stats.failures, stats.last_error) == ("backoff", 1, "Boom: injected")
        assert stats.next_start_at == 6.0  # the policy's first backoff delay, from the failure at 5 s
        with pytest.raises(RuntimeError, match="no running actor"):
            sup.fail_child("c", Boom("while in backoff"))
        await trio.sleep(2)
        assert child(sup, "c").state == "running" and child(sup, "c").restarts == 1
        sup.fail_child("c", Boom("again"))
        await trio.testing.wait_all_tasks_blocked()
        assert child(sup, "c").failures == 2
        await trio.sleep(2)
        await sup.stop()
        nursery.cancel_scope.cancel()
    assert len(factory.instances) == 3  # a fresh actor per start
    assert journal.times("c", "run") == [0.0, 6.0, 8.0]
    assert journal.times("c", "cancelled") == [5.0, 7.0]
