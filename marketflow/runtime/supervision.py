"""The supervision vocabulary (OTP's): strategies, restart types, a supervisor's policy, the spec of a
child, the statistics a supervisor reports and the escalation it raises. :mod:`.supervisor` runs them."""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from .actor import Actor


class Strategy(enum.StrEnum):
    """Which children a supervisor restarts when one of them ends."""

    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.StrEnum):
    """When a child is restarted: PERMANENT always, TRANSIENT after a failure, TEMPORARY never."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@attrs.frozen
class SupervisorPolicy:
    """How a supervisor restarts its children."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    backoff_initial_s: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    backoff_max_s: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    circuit_failures: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    circuit_window_s: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    circuit_open_s: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    intensity: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )
    """Most automatic restarts allowed within ``period_s`` across all children; None: no limit."""
    period_s: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    traceback_interval_s: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))
    """A child's unexpected failures show their traceback at most once per this many seconds."""

    def __attrs_post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )


@attrs.frozen
class ChildSpec:
    """One child of a supervisor."""

    name: str
    factory: Callable[[], Actor]
    """Called for every (re)start; returns a fresh actor."""
    restart: Restart = Restart.PERMANENT
    shutdown_timeout_s: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    on_stop: Callable[[], None] | None = None
    """Called when the supervisor stops this child, after ``request_stop()`` and before waiting."""


@attrs.frozen
class ChildStatistics:
    """Snapshot of one child.

    ``state`` is one of "starting", "running", "backoff", "circuit_open", "stopping", "stopped"
    and "failed" (a TRANSIENT or TEMPORARY child that failed and will not be restarted).
    """

    name: str
    state: str
    restarts: int
    failures: int
    last_error: str | None
    """``"ExcType: message"`` of the last failure."""
    circuit: str
    """The :class:`CircuitState` value."""
    next_start_at: float | None
    """Trio time of the next (re)start while in "backoff" or "circuit_open"."""
    started_at: float | None
    """Trio time the current actor called ``task_status.started()``."""
    actor: object | None
    """The current actor's ``statistics()`` while it exists (starting, running or stopping)."""


@attrs.frozen
class SupervisorStatistics:
    """Snapshot of a supervisor and its children, in start order."""

    name: str
    strategy: Strategy
    restarts_total: int
    children: tuple[ChildStatistics, ...]


class SupervisorEscalation(Exception):
    """A supervisor's children restarted more often than its policy allows."""

    def __init__(self, supervisor: str, child: str, restarts: int, period_s: float, intensity: int) -> None:
        super().__init__(
            f"supervisor {supervisor!r}: child {child!r} needed restart number {restarts} within "
            f"{period_s:g} s, more than the intensity of {intensity}; all children were stopped"
        )
        self.supervisor = supervisor
        self.child = child
        self.restarts = restarts
        self.period_s = period_s
        self.intensity = intensity
