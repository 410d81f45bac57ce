"""The actor contract shared by everything a :class:`~marketflow.runtime.supervisor.Supervisor` runs.

An actor is a small object with a ``name``, an ``async def run(*, task_status)`` that calls
``task_status.started()`` once it is really ready, and a ``statistics()`` returning a frozen record.

An actor MAY also have a synchronous ``request_stop() -> None`` asking it to finish gracefully
(drain, flush, then return from ``run``); the supervisor calls it before waiting for the child's
shutdown deadline and cancelling.
"""

from __future__ import annotations

from typing import Protocol

import trio

__all__ = ["Actor", "GracefulStop"]


class Actor(Protocol):
    """Something a supervisor can run, restart and inspect."""

    # A read-only property in the protocol accepts both plain attributes and properties
    # (e.g. frozen attrs classes), which a settable ``name: str`` member would reject.
    @property
    def name(self) -> str:
        """Name used in logs and statistics."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until done; call ``task_status.started()`` once ready."""
        ...

    def statistics(self) -> object:
        """A frozen snapshot of the actor's counters."""
        ...


class GracefulStop(Protocol):
    """The optional part of the actor contract: a synchronous request to finish gracefully."""

    def request_stop(self) -> None:
        """Ask the actor to drain/flush and return from ``run``; must not block."""
        ...
