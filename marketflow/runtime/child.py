"""What a :class:`~.supervisor.Supervisor` keeps per child: its state across incarnations, the actor of the
current one, the ``task_status`` it hands to ``run``, and how a child's failure is described in logs."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from .actor import Actor
from .backoff import Backoff
from .circuit import CircuitBreaker
from .supervision import ChildSpec


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _operational(exc: BaseException) -> bool:
    """An expected failure of the outside world (class attribute ``operational``), or a group of them."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_operational(inner) for inner in exc.exceptions)
    return getattr(type(exc), "operational", False) is True


def _failure_fields(exc: BaseException) -> dict[str, object]:
    """The reason of a failure and the exception's own ``log_fields`` (first leaf of a group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    fields = getattr(exc, "log_fields", None)
    merged: dict[str, object] = dict(fields) if isinstance(fields, dict) else {}
    merged.setdefault("reason", _describe(exc))
    return merged


class _ChildTaskStatus:
    """The ``task_status`` handed to a child's ``run``; reports ``started()`` to the supervisor.

    A supervisor-made status rather than ``nursery.start``'s, so an actor that fails or returns
    before ``started()`` is an ordinary child failure instead of an error in the supervisor.
    """

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started
        self._called = False

    def started(self, value: object = None) -> None:
        if self._called:
            raise RuntimeError("called 'started' twice on the same task status")
        self._called = True
        self._on_started()

    @property
    def called(self) -> bool:
        return self._called


@attrs.define(eq=False)
class _Incarnation:
    """One actor made by a child's factory, from creation until its ``run`` returned."""

    actor: Actor
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    ended: trio.Event = attrs.field(factory=trio.Event)
    stop_requested: bool = False
    injected: Exception | None = None
    """A failure injected by :meth:`Supervisor.fail_child`."""


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    backoff: Backoff
    circuit: CircuitBreaker
    state: str = "stopped"
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    next_start_at: float | None = None
    started_at: float | None = None
    incarnation: _Incarnation | None = None
    traceback_at: float | None = None
    """Trio time the last traceback of this child was logged."""
    launched: bool = False
    live: bool = False
    """The child's task exists (from launch until it ended)."""
    stopping: bool = False
    """The supervisor stops this child; it must not start again in this launch."""
    removed: bool = False
    runner_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    first_attempt: trio.Event = attrs.field(factory=trio.Event)
