"""Fault configuration for the simulator and the runtime state that injects the faults.

Faults are part of the server, not of a venue: drops and stalls hit every connection, malformed frames are
rotated per connection (the venue module decides what each kind looks like on its wire). Book faults
(skipped updates; crossed books, stale snapshots and Bybit restarts through `SimServer` methods) live on
the books themselves (`marketflow.sim.book`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio


def strings(values: Iterable[str]) -> tuple[str, ...]:
    """attrs converter: any iterable of strings to a tuple."""
    return tuple(values)


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"faults.{attribute.name} must be positive or None, got {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"faults.{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class Faults:
    """Faults injected on a schedule. Every field off by default."""

    drop_every_s: float | None = attrs.field(default=None, validator=_positive_or_none)
    """Abort every connection's TCP (no close frame) every N seconds."""
    malformed_every: int | None = attrs.field(default=None, validator=_positive_or_none)
    """After every N-th data frame on a connection, also send one malformed frame (kinds rotate)."""
    stall_every_s: float | None = attrs.field(default=None, validator=_positive_or_none)
    """Every N seconds, send nothing at all (data, pongs) for `stall_for_s`."""
    stall_for_s: float = attrs.field(default=0.0, validator=_not_negative)
    reject_topics: tuple[str, ...] = attrs.field(default=(), converter=strings)
    """Subscribes to these topics fail as if the topic were unknown."""
    slow_pong_s: float = attrs.field(default=0.0, validator=_not_negative)
    """Delay every JSON pong by this long."""
    skip_every_n_updates: int | None = attrs.field(default=None, validator=_positive_or_none)
    """Every book's N-th, 2N-th, … update is generated but not sent (a sequence gap on every stream)."""
    out_of_order_every: int | None = attrs.field(default=None, validator=_positive_or_none)
    """Ticker and mark-price streams send every N-th message's predecessor again after it (an old tick
    arriving late)."""


class MalformedKind(enum.Enum):
    """What is wrong with a malformed frame; each connection cycles through them in this order."""

    TRUNCATED_JSON = "truncated_json"
    NOT_JSON = "not_json"
    UNKNOWN_TOPIC = "unknown_topic"
    BINARY = "binary"
    BAD_PRICE = "bad_price"
    MISSING_SIDE = "missing_side"


MALFORMED_ROTATION: tuple[MalformedKind, ...] = tuple(MalformedKind)


class MalformedSchedule:
    """Per connection: when to slip a malformed frame in after a data frame, and which kind."""

    __slots__ = ("armed", "every", "injected", "_count", "_next_kind")

    def __init__(self, every: int | None) -> None:
        self.every = every
        self.injected = 0
        self.armed = every is not None  # fast check on the hot path
        self._count = 0
        self._next_kind = 0

    def inject(self, count: int) -> None:
        """The next data frame is followed by `count` extra malformed frames."""
        self.injected += count
        self.armed = self.armed or count > 0

    def after_data_frame(self) -> int:
        """Count one data frame; return how many malformed frames go out right after it."""
        self._count += 1
        due = self.injected
        self.injected = 0
        if self.every is not None and self._count % self.every == 0:
            due += 1
        self.armed = self.every is not None
        return due

    def next_kind(self) -> MalformedKind:
        kind = MALFORMED_ROTATION[self._next_kind % len(MALFORMED_ROTATION)]
        self._next_kind += 1
        return kind


class StallGate:
    """Server-wide: while stalled, connections send nothing (their queues keep filling)."""

    def __init__(self) -> None:
        self._until = float("-inf")

    def stall(self, seconds: float) -> None:
        """Stall every connection for `seconds` from now (extends a running stall, never shortens it)."""
        self._until = max(self._until, trio.current_time() + seconds)

    def stalled(self) -> bool:
        return trio.current_time() < self._until

    async def wait_open(self) -> None:
        """Return when no stall is in force (a stall extended meanwhile is waited out too)."""
        while trio.current_time() < self._until:  # noqa: ASYNC110 - the deadline can move while we sleep
            await trio.sleep_until(self._until)


async def run_scheduled_faults(
    faults: Faults, *, drop: Callable[[], int], stall: Callable[[float], None]
) -> None:
    """Apply the periodic faults of `faults` until cancelled."""
    async with trio.open_nursery() as nursery:
        if faults.drop_every_s is not None:
            nursery.start_soon(_every, faults.drop_every_s, drop)
        if faults.stall_every_s is not None and faults.stall_for_s > 0:
            stall_for = faults.stall_for_s
            nursery.start_soon(_every, faults.stall_every_s, lambda: stall(stall_for))


async def _every(period: float, action: Callable[[], object]) -> None:
    next_at = trio.current_time() + period
    while True:
        await trio.sleep_until(next_at)
        action()
        next_at += period


__all__ = ["MALFORMED_ROTATION", "Faults", "MalformedKind", "MalformedSchedule", "StallGate"]
