"""A supervisor that runs actors as children and restarts them, in the manner of Erlang/OTP.

Each child runs in its own task under the supervisor's nursery, with its own cancel scope, so one
child's crash never touches a sibling. What happens when a child's ``run`` ends:

* It raised (any ``Exception``, including an ``ExceptionGroup`` from its own nursery), or its
  factory raised, or it returned without calling ``task_status.started()``: a *failure*. The
  failure goes into the child's circuit breaker. If that opened the circuit, the child waits until
  the circuit is half-open and gets one trial start (state ``circuit_open``); otherwise it waits
  ``backoff.next_delay()`` (state ``backoff``).
* It returned normally: a PERMANENT child is restarted after a backoff delay (the circuit is not
  involved), a TRANSIENT or TEMPORARY child is done (state ``stopped``).
* A failed TRANSIENT or TEMPORARY child is not restarted either (state ``failed``).

When a child calls ``task_status.started()`` its backoff is reset and a half-open circuit closes.
``trio.Cancelled`` and other ``BaseException`` s are never caught.

Strategies: ONE_FOR_ONE restarts only the child that ended. REST_FOR_ONE also stops the children
after it (reverse order, gracefully) and starts them again in order once it is running again; a
child in REST_FOR_ONE only (re)starts while every earlier live child is running. As in OTP, a
TEMPORARY child stopped this way is not started again.

Intensity: more than ``policy.intensity`` automatic restarts (restarts after a child ended, counted
when decided) within ``policy.period_s`` make the supervisor stop all children and raise
:class:`SupervisorEscalation` from ``run()``. Restarts of later siblings under REST_FOR_ONE and
:meth:`Supervisor.restart_child` do not count towards it (they are counted in ``restarts``).

Graceful stop of a child (on :meth:`Supervisor.stop`, :meth:`Supervisor.remove_child`,
:meth:`Supervisor.restart_child` and REST_FOR_ONE): the actor's ``request_stop()`` if it has one,
then the spec's ``on_stop()`` if set, then ``run()`` gets ``shutdown_timeout_s`` to return before
it is cancelled. Children are stopped one at a time, in reverse start order.

Logging a failure: an exception whose class sets ``operational = True`` is an expected failure of
the outside world (DNS, a refused or dropped connection, TLS, a timeout) that a restart may cure: it
is one WARNING line naming the child, the reason and the next retry, plus the exception's
``log_fields`` mapping if it has one (a feed adds its URL). Any other exception is a bug to look at
and gets its traceback, at most once per child per ``policy.traceback_interval_s``.

All times come from ``trio.current_time()``.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Sequence

import trio

from .actor import Actor
from .backoff import Backoff
from .child import _Child, _ChildTaskStatus, _describe, _failure_fields, _Incarnation, _operational
from .circuit import CircuitBreaker, CircuitState
from .supervision import (
    ChildSpec,
    ChildStatistics,
    Restart,
    Strategy,
    SupervisorEscalation,
    SupervisorPolicy,
    SupervisorStatistics,
)

__all__ = [
    "ChildSpec",
    "ChildStatistics",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorPolicy",
    "SupervisorStatistics",
]

logger = logging.getLogger("marketflow.supervisor")


class Supervisor:
    """Runs children (actors) and restarts them according to a :class:`SupervisorPolicy`.

    A supervisor is itself an actor, so supervisors can be nested.
    """

    def __init__(
        self,
        name: str,
        policy: SupervisorPolicy,
        children: Sequence[ChildSpec] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._children: list[_Child] = []
        for spec in children:
            self._children.append(self._new_child(spec))
        self._restarts_total = 0
        self._restart_times: collections.deque[float] = collections.deque()
        self._escalation: SupervisorEscalation | None = None
        self._phase = "new"  # -> "running" -> "finished"
        self._nursery: trio.Nursery | None = None
        self._stop_requested = trio.Event()
        self._startup_scope = trio.CancelScope()
        self._startup_done = trio.Event()
        self._finished = trio.Event()
        self._changed = trio.Event()

    @property
    def policy(self) -> SupervisorPolicy:
        """The policy this supervisor was created with."""
        return self._policy

    # ------------------------------------------------------------------ actor interface

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, signal started, and supervise them until stopped.

        Each child is started once it is running or its first attempt failed (under REST_FOR_ONE,
        also once it waits for an earlier sibling). Returns after :meth:`stop` /
        :meth:`request_stop` has stopped all children; raises :class:`SupervisorEscalation`
        (after stopping all children) when the restart intensity is exceeded.
        """
        if self._phase != "new":
            raise RuntimeError(f"supervisor {self.name!r} can only run once")
        self._phase = "running"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._start_initial_children)
                await self._startup_done.wait()
                task_status.started()
                await self._stop_requested.wait()
                await self._stop_all()
                nursery.cancel_scope.cancel(reason=f"supervisor {self.name!r} stopped")
        finally:
            self._nursery = None
            self._phase = "finished"
            self._finished.set()
        if self._escalation is not None:
            raise self._escalation

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop all children gracefully and return; does not wait."""
        self._stop_requested.set()
        self._startup_scope.cancel(reason=f"supervisor {self.name!r} stopping")

    async def stop(self) -> None:
        """Stop all children gracefully (reverse start order) and wait until :meth:`run` returned.

        If ``run`` has not been called yet, it will return at once when it is.
        """
        self.request_stop()
        if self._phase != "new":
            await self._finished.wait()

    def statistics(self) -> SupervisorStatistics:
        """Snapshot of the supervisor and all its children (call from within trio)."""
        now = trio.current_time()
        return SupervisorStatistics(
            name=self.name,
            strategy=self._policy.strategy,
            restarts_total=self._restarts_total,
            children=tuple(self._child_statistics(child, now) for child in self._children),
        )

    # ------------------------------------------------------------------ dynamic children

    def child_names(self) -> list[str]:
        """Names of the children in start order."""
        return [child.spec.name for child in self._children]

    async def add_child(self, spec: ChildSpec) -> None:
        """Add a child at the end of the start order and start it.

        Returns once it is running or its first attempt failed (then it is restarted as usual).
        Before :meth:`run`, the child is only added and ``run`` starts it.
        """
        if self._phase == "finished" or self._stop_requested.is_set():
            raise RuntimeError(f"supervisor {self.name!r} is stopped; cannot add child {spec.name!r}")
        child = self._new_child(spec)
        self._children.append(child)
        if self._phase == "new":
            return
        await self._startup_done.wait()
        if self._stop_requested.is_set() or child.removed:
            return
        if child.launched:
            await child.first_attempt.wait()
        else:
            await self._launch(child)

    async def remove_child(self, name: str) -> None:
        """Stop one child gracefully and forget it."""
        child = self._find(name)
        child.removed = True
        await self._stop_child(child)
        if child in self._children:
            self._children.remove(child)
        self._notify()

    async def restart_child(self, name: str) -> None:
        """Stop one child gracefully and start it again at once, with its backoff reset.

        Only the named child is restarted, whatever the strategy. Returns once it is running or
        its first attempt failed.
        """
        child = self._find(name)
        await self._stop_child(child)
        child.backoff.reset()
        if child.removed or self._phase != "running" or self._stop_requested.is_set():
            return
        child.restarts += 1
        self._restarts_total += 1
        logger.info("supervisor %s: restarting child %s on request", self.name, name)
        await self._launch(child)

    def fail_child(self, name: str, error: Exception) -> None:
        """Fault injection (tests, drills): end the child's current actor as if its ``run`` raised ``error``.

        The actor is cancelled where it waits (its ``finally`` blocks run, as for any exception) and its
        end is handled as a failure: circuit, backoff, then a fresh actor from the factory.
        """
        inc = self._find(name).incarnation
        if inc is None or inc.ended.is_set() or inc.stop_requested:
            raise RuntimeError(f"supervisor {self.name!r}: child {name!r} has no running actor to fail")
        inc.injected = error
        inc.scope.cancel(reason=f"fault injected: {_describe(error)}")

    # ------------------------------------------------------------------ internals

    def _new_child(self, spec: ChildSpec) -> _Child:
        if any(child.spec.name == spec.name for child in self._children):
            raise ValueError(f"supervisor {self.name!r} already has a child named {spec.name!r}")
        policy = self._policy
        return _Child(
            spec=spec,
            backoff=Backoff(policy.backoff_initial_s, policy.backoff_max_s, self._rng),
            circuit=CircuitBreaker(policy.circuit_failures, policy.circuit_window_s, policy.circuit_open_s),
        )

    def _find(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise KeyError(f"supervisor {self.name!r} has no child named {name!r}")

    def _child_statistics(self, child: _Child, now: float) -> ChildStatistics:
        inc = child.incarnation
        return ChildStatistics(
            name=child.spec.name,
            state=child.state,
            restarts=child.restarts,
            failures=child.failures,
            last_error=child.last_error,
            circuit=child.circuit.state(now).value,
            next_start_at=child.next_start_at,
            started_at=child.started_at,
            actor=inc.actor.statistics() if inc is not None and not inc.ended.is_set() else None,
        )

    def _notify(self) -> None:
        # Wakes every child waiting for its predecessors (REST_FOR_ONE) to re-check.
        self._changed.set()
        self._changed = trio.Event()

    async def _start_initial_children(self) -> None:
        try:
            with self._startup_scope:
                for child in list(self._children):
                    if self._stop_requested.is_set():
                        break
                    if not child.removed and not child.launched:
                        await self._launch(child)
        finally:
            self._startup_done.set()

    async def _launch(self, child: _Child) -> None:
        if not child.live:
            assert self._nursery is not None
            child.launched = True
            child.live = True
            child.stopping = False
            child.state = "starting"
            child.runner_scope = trio.CancelScope()
            child.done = trio.Event()
            child.first_attempt = trio.Event()
            self._nursery.start_soon(self._child_task, child, name=f"{self.name}/{child.spec.name}")
        await child.first_attempt.wait()

    async def _child_task(self, child: _Child) -> None:
        try:
            with child.runner_scope:
                while not child.stopping:
                    if child.next_start_at is not None:
                        await trio.sleep_until(child.next_start_at)
                        child.next_start_at = None
                    await self._wait_for_predecessors(child)
                    if self._stop_requested.is_set():
                        # Wait for _stop_all to get here, so the stop hooks run as for any child.
                        child.state = "stopping"
                        await trio.sleep_forever()
                    inc, error = await self._run_once(child)
                    if not await self._after_exit(child, inc, error):
                        break
        finally:
            child.live = False
            child.incarnation = None
            child.next_start_at = None
            child.started_at = None
            if child.stopping or child.state != "failed":
                child.state = "stopped"
            child.first_attempt.set()
            child.done.set()
            self._notify()

    async def _wait_for_predecessors(self, child: _Child) -> None:
        if self._policy.strategy is not Strategy.REST_FOR_ONE:
            return
        while True:
            changed = self._changed
            if self._predecessors_up(child):
                return
            child.state = "starting"
            # Don't hold up run()/add_child behind an earlier sibling that keeps failing.
            child.first_attempt.set()
            await changed.wait()

    def _predecessors_up(self, child: _Child) -> bool:
        for other in self._children:
            if other is child:
                return True
            if other.live and other.state != "running":
                return False
        return True

    async def _run_once(self, child: _Child) -> tuple[_Incarnation | None, Exception | None]:
        """Make an actor and run it until it ends; return it and the exception it failed with."""
        child.state = "starting"
        try:
            actor = child.spec.factory()
        except Exception as exc:
            return None, exc
        inc = _Incarnation(actor)
        child.incarnation = inc
        status = _ChildTaskStatus(lambda: self._on_started(child, inc))
        error: Exception | None = None
        try:
            try:
                with inc.scope:
                    await actor.run(task_status=status)
            except Exception as exc:
                error = exc
        except* Exception as group:
            # The child failed while being cancelled from outside: record it, let Cancelled propagate.
            self._record_error(child, group)
            logger.warning("supervisor %s: child %s failed: %s", self.name, child.spec.name, _describe(group))
        finally:
            inc.ended.set()
            child.incarnation = None
            child.started_at = None
        if inc.injected is not None:
            error = error or inc.injected
        elif inc.scope.cancelled_caught:
            logger.warning(
                "supervisor %s: child %s did not stop within %g s; cancelled it",
                self.name,
                child.spec.name,
                child.spec.shutdown_timeout_s,
            )
        if error is None and not status.called and not inc.stop_requested:
            error = RuntimeError(f"child {child.spec.name!r} returned without calling task_status.started()")
        return inc, error

    def _on_started(self, child: _Child, inc: _Incarnation) -> None:
        if inc.ended.is_set():
            return
        now = trio.current_time()
        child.started_at = now
        if not inc.stop_requested:
            child.state = "running"
        child.backoff.reset()
        if child.circuit.state(now) is CircuitState.HALF_OPEN:
            child.circuit.record_success(now)
        logger.debug("supervisor %s: child %s running", self.name, child.spec.name)
        child.first_attempt.set()
        self._notify()

    def _record_error(self, child: _Child, error: BaseException) -> None:
        child.failures += 1
        child.last_error = _describe(error)

    async def _after_exit(self, child: _Child, inc: _Incarnation | None, error: Exception | None) -> bool:
        """Account for a child's end and decide whether its task goes on (True) or ends (False)."""
        name = child.spec.name
        now = trio.current_time()
        child.first_attempt.set()
        if error is not None:
            self._record_error(child, error)
        if inc is not None and inc.stop_requested:
            # We stopped it: neither the circuit nor the backoff hear about it.
            if error is not None:
                logger.warning(
                    "supervisor %s: child %s failed while stopping: %s", self.name, name, child.last_error
                )
            if child.stopping or child.spec.restart is Restart.TEMPORARY:
                child.state = "stopped"
                return False
            # Stopped as a later sibling under REST_FOR_ONE: start again once the earlier ones run.
            child.restarts += 1
            self._restarts_total += 1
            logger.info(
                "supervisor %s: restarting child %s after its earlier siblings run (restart %d)",
                self.name,
                name,
                child.restarts,
            )
            child.state = "starting"
            return True
        if child.stopping:
            child.state = "stopped"
            return False

        if error is not None:
            child.circuit.record_failure(now)
        restart = child.spec.restart is Restart.PERMANENT or (
            child.spec.restart is Restart.TRANSIENT and error is not None
        )
        if not restart:
            if error is None:
                child.state = "stopped"
                logger.info("supervisor %s: child %s finished", self.name, name)
            else:
                child.state = "failed"
                self._log_failure(child, error, None, now)
            return False
        if self._stop_requested.is_set():
            if error is not None:
                self._log_failure(child, error, None, now)
            return True  # the loop parks it until _stop_all stops it
        if not self._admit_restart(now):
            if error is not None:
                self._log_failure(child, error, None, now)
            self._escalate(child, error)
            return False

        child.restarts += 1
        self._restarts_total += 1
        reopens_at = child.circuit.reopens_at()
        if reopens_at is not None and child.circuit.state(now) is CircuitState.OPEN:
            child.state = "circuit_open"
            child.next_start_at = reopens_at
        else:
            child.state = "backoff"
            child.next_start_at = now + child.backoff.next_delay()
        if error is not None:
            self._log_failure(child, error, child.next_start_at - now, now)
        else:
            logger.info(
                "supervisor %s: restarting child %s in %.3f s (%s, restart %d)",
                self.name,
                name,
                child.next_start_at - now,
                child.state,
                child.restarts,
            )
        if self._policy.strategy is Strategy.REST_FOR_ONE:
            await self._stop_successors(child)
        return True

    def _log_failure(self, child: _Child, error: Exception, retry_in: float | None, now: float) -> None:
        """One WARNING line; a traceback only for an unexpected failure, once per interval per child."""
        fields: dict[str, object] = {"supervisor": self.name, "child": child.spec.name}
        fields.update(_failure_fields(error))
        if retry_in is not None:
            fields["retry_in_s"] = round(retry_in, 3)
            fields["state"] = child.state
            fields["restart"] = child.restarts
        exc_info: Exception | None = None
        if not _operational(error):
            interval = self._policy.traceback_interval_s
            if child.traceback_at is None or now - child.traceback_at >= interval:
                child.traceback_at = now
                exc_info = error
            else:
                fields["traceback"] = f"shown at most once per {interval:g} s"
        fields["_rate_key"] = child.spec.name  # repeats are rate-limited per child, not across them
        message = "child failed; restarting" if retry_in is not None else "child failed"
        logger.warning(message, extra=fields, exc_info=exc_info)

    def _admit_restart(self, now: float) -> bool:
        """Count one automatic restart at ``now``; False if that would exceed the intensity."""
        intensity = self._policy.intensity
        if intensity is None:
            return True
        times = self._restart_times
        horizon = now - self._policy.period_s
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) + 1 > intensity:
            return False
        times.append(now)
        return True

    def _escalate(self, child: _Child, error: Exception | None) -> None:
        intensity = self._policy.intensity
        assert intensity is not None
        child.state = "failed"
        escalation = SupervisorEscalation(
            supervisor=self.name,
            child=child.spec.name,
            restarts=len(self._restart_times) + 1,
            period_s=self._policy.period_s,
            intensity=intensity,
        )
        escalation.__cause__ = error
        logger.error("%s", escalation)
        if self._escalation is None:
            self._escalation = escalation
        self.request_stop()

    async def _stop_successors(self, child: _Child) -> None:
        index = self._children.index(child)
        for later in reversed(self._children[index + 1 :]):
            inc = later.incarnation
            if inc is not None and not inc.ended.is_set():
                await self._stop_incarnation(later, inc)

    async def _stop_incarnation(self, child: _Child, inc: _Incarnation) -> None:
        """Graceful stop of one actor; safe to call again (the first call sets the deadline)."""
        if not inc.stop_requested:
            inc.stop_requested = True
            child.state = "stopping"
            self._call_stop_hooks(child, inc.actor)
            # A deadline on the actor's own scope, so it holds even if this waiter is cancelled.
            inc.scope.deadline = min(inc.scope.deadline, trio.current_time() + child.spec.shutdown_timeout_s)
        await inc.ended.wait()

    def _call_stop_hooks(self, child: _Child, actor: Actor | None) -> None:
        request_stop = getattr(actor, "request_stop", None) if actor is not None else None
        if callable(request_stop):
            try:
                request_stop()
            except Exception as exc:
                self._hook_failed(child, "request_stop", exc)
        if child.spec.on_stop is not None:
            try:
                child.spec.on_stop()
            except Exception as exc:
                self._hook_failed(child, "on_stop", exc)

    def _hook_failed(self, child: _Child, hook: str, exc: Exception) -> None:
        # A broken hook must not keep the other children from being stopped.
        self._record_error(child, exc)
        logger.warning(
            "supervisor %s: child %s: %s() failed: %s", self.name, child.spec.name, hook, _describe(exc)
        )

    async def _stop_child(self, child: _Child) -> None:
        """Graceful stop of one child; its task ends and does not restart it."""
        if not child.live:
            return
        first = not child.stopping
        child.stopping = True
        inc = child.incarnation
        if inc is not None and not inc.ended.is_set():
            await self._stop_incarnation(child, inc)
        elif first:
            child.state = "stopping"
            self._call_stop_hooks(child, None)
        child.runner_scope.cancel(reason=f"child {child.spec.name!r} stopped")
        await child.done.wait()

    async def _stop_all(self) -> None:
        for child in reversed(list(self._children)):
            await self._stop_child(child)
