"""A time-parametrised circuit breaker.

The breaker does not read a clock: every method takes ``now`` so the same object works with
``trio.current_time()``, a test clock, or plain numbers.

* CLOSED: failures are remembered for ``window_s`` seconds; when ``failures`` of them fall within
  the window the circuit opens.
* OPEN: for ``open_s`` seconds after opening, callers should not try.
* HALF_OPEN: from ``opened_at + open_s`` on, one trial is allowed; a success closes the circuit
  (and forgets the failure history), a failure opens it again for another ``open_s``.
"""

from __future__ import annotations

import collections
import enum

import attrs

__all__ = ["CircuitBreaker", "CircuitState", "CircuitStatistics"]


class CircuitState(enum.StrEnum):
    """State of a :class:`CircuitBreaker`; each member equals its string value."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class CircuitStatistics:
    """Snapshot of a :class:`CircuitBreaker` at a given time."""

    state: CircuitState
    recent_failures: int
    """Failures inside the sliding window at the time of the snapshot."""
    times_opened: int
    """How often the circuit went to OPEN (including re-opening after a failed trial)."""


class CircuitBreaker:
    """Opens after ``failures`` failures within ``window_s`` seconds, for ``open_s`` seconds."""

    def __init__(self, failures: int, window_s: float, open_s: float) -> None:
        if failures < 1:
            raise ValueError(f"circuit failures must be >= 1, got {failures}")
        if window_s <= 0:
            raise ValueError(f"circuit window_s must be > 0, got {window_s}")
        if open_s < 0:
            raise ValueError(f"circuit open_s must be >= 0, got {open_s}")
        self._threshold = failures
        self._window_s = window_s
        self._open_s = open_s
        self._failure_times: collections.deque[float] = collections.deque()
        self._opened_at: float | None = None
        self._times_opened = 0

    def state(self, now: float) -> CircuitState:
        """The state at time ``now``: an OPEN circuit is HALF_OPEN from ``opened_at + open_s`` on."""
        if self._opened_at is None:
            return CircuitState.CLOSED
        if now >= self._opened_at + self._open_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def record_failure(self, now: float) -> None:
        """Count a failure at ``now``; may open (or re-open) the circuit."""
        state = self.state(now)
        self._prune(now)
        self._failure_times.append(now)
        # A failed trial re-opens at once; a closed circuit opens when the window holds enough failures.
        reached = len(self._failure_times) >= self._threshold
        if state is CircuitState.HALF_OPEN or (state is CircuitState.CLOSED and reached):
            self._open(now)

    def record_success(self, now: float) -> None:
        """Count a success at ``now``: a HALF_OPEN circuit closes and forgets its failures."""
        if self.state(now) is CircuitState.HALF_OPEN:
            self._opened_at = None
            self._failure_times.clear()

    def reopens_at(self) -> float | None:
        """When the current opening ends (the circuit turns HALF_OPEN); ``None`` while closed."""
        if self._opened_at is None:
            return None
        return self._opened_at + self._open_s

    def statistics(self, now: float) -> CircuitStatistics:
        """Snapshot at time ``now`` (the breaker has no clock of its own)."""
        self._prune(now)
        return CircuitStatistics(
            state=self.state(now),
            recent_failures=len(self._failure_times),
            times_opened=self._times_opened,
        )

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._times_opened += 1

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        times = self._failure_times
        while times and times[0] <= horizon:
            times.popleft()
