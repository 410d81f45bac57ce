"""Fan-out of batches to subscribers over bounded trio memory channels.

Every subscriber gets its own channel with a capacity counted in batches and an overflow policy:
BLOCK (the publisher waits for room: nothing is lost, e.g. storage) or DROP_OLDEST (the publisher
never waits: the oldest queued batch is discarded and counted, e.g. live views).

The bus keeps the original receive end of every subscription, so a subscriber actor that restarts
takes a fresh clone with :meth:`Subscription.receiver` and continues where the old one stopped.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

import attrs
import trio

__all__ = [
    "Bus",
    "BusStatistics",
    "Overflow",
    "SubscriberStatistics",
    "Subscription",
    "receive_batches",
]

T = TypeVar("T")


class Overflow(enum.StrEnum):
    """What publishing does when a subscriber's channel is full."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


@attrs.frozen
class SubscriberStatistics:
    """Counters of one subscription; all counts are in batches unless named ``_items``."""

    name: str
    overflow: Overflow
    capacity: int
    queued_batches: int
    delivered_batches: int
    dropped_batches: int
    dropped_items: int


@attrs.frozen
class BusStatistics:
    """Counters of a bus and its subscriptions (in subscription order)."""

    name: str
    published_batches: int
    published_items: int
    subscribers: tuple[SubscriberStatistics, ...]


class Subscription(Generic[T]):
    """One subscriber's queue on a :class:`Bus`; made by :meth:`Bus.subscribe`."""

    def __init__(self, name: str, capacity: int, overflow: Overflow) -> None:
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self._send, self._receive = trio.open_memory_channel[list[T]](capacity)
        self._enqueued_batches = 0
        self._dropped_batches = 0
        self._dropped_items = 0

    def receiver(self) -> trio.MemoryReceiveChannel[list[T]]:
        """A fresh clone of the receive end; close it when done (``with sub.receiver() as rx:``).

        The bus keeps the original open, so a restarted subscriber can take a new clone and
        receive what is still queued, even after :meth:`Bus.close`.
        """
        return self._receive.clone()

    def statistics(self) -> SubscriberStatistics:
        """Snapshot of this subscription's counters."""
        queued = self._receive.statistics().current_buffer_used
        return SubscriberStatistics(
            name=self.name,
            overflow=self.overflow,
            capacity=self.capacity,
            queued_batches=queued,
            delivered_batches=self._enqueued_batches - self._dropped_batches - queued,
            dropped_batches=self._dropped_batches,
            dropped_items=self._dropped_items,
        )

    async def _put_blocking(self, batch: list[T]) -> None:
        try:
            self._send.send_nowait(batch)
        except trio.WouldBlock:
            await self._send.send(batch)
        self._enqueued_batches += 1

    def _put_dropping(self, batch: list[T]) -> None:
        try:
            self._send.send_nowait(batch)
        except trio.WouldBlock:
            # Full means nobody is waiting in receive(), so the oldest batch is ours to take.
            dropped = self._receive.receive_nowait()
            self._dropped_batches += 1
            self._dropped_items += len(dropped)
            self._send.send_nowait(batch)
        self._enqueued_batches += 1

    def _close(self) -> None:
        self._send.close()


class Bus(Generic[T]):
    """Publishes batches (``list[T]``) to every subscription."""

    def __init__(self, name: str) -> None:
        self.name = name
        # A tuple, replaced on subscribe, so publish can iterate while a subscription is added.
        self._subscriptions: tuple[Subscription[T], ...] = ()
        self._closed = False
        self._published_batches = 0
        self._published_items = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def subscribe(self, name: str, capacity: int, overflow: Overflow = Overflow.BLOCK) -> Subscription[T]:
        """Add a subscriber with room for ``capacity`` batches; it gets batches published from now on."""
        if self._closed:
            raise trio.ClosedResourceError(f"bus {self.name!r} is closed; cannot subscribe {name!r}")
        if capacity < 1:
            raise ValueError(
                f"bus {self.name!r}: capacity of subscriber {name!r} must be >= 1, got {capacity}"
            )
        if any(sub.name == name for sub in self._subscriptions):
            raise ValueError(f"bus {self.name!r} already has a subscriber named {name!r}")
        subscription = Subscription[T](name, capacity, Overflow(overflow))
        self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    async def publish(self, batch: list[T]) -> None:
        """Send ``batch`` to every subscriber; empty batches are not sent.

        Waits for room at BLOCK subscribers; DROP_OLDEST subscribers never make it wait. Raises
        ``trio.ClosedResourceError`` after :meth:`close` (also when the bus is closed while this
        waits). If cancelled while waiting, subscribers earlier in order already have the batch.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("bus is closed")
        if batch:
            self._published_batches += 1
            self._published_items += len(batch)
            for subscription in self._subscriptions:
                if subscription.overflow is Overflow.BLOCK:
                    await subscription._put_blocking(batch)
                else:
                    subscription._put_dropping(batch)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self) -> None:
        """No more publishing; subscribers receive what is queued, then ``trio.EndOfChannel``.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription._close()

    def subscriptions(self) -> tuple[Subscription[T], ...]:
        """The subscriptions in the order they were made."""
        return self._subscriptions

    def statistics(self) -> BusStatistics:
        """Snapshot of the bus counters and every subscription's."""
        return BusStatistics(
            name=self.name,
            published_batches=self._published_batches,
            published_items=self._published_items,
            subscribers=tuple(sub.statistics() for sub in self._subscriptions),
        )


async def receive_batches(
    receiver: trio.MemoryReceiveChannel[list[T]], max_batches: int = 1024
) -> list[list[T]]:
    """Wait for one batch, then take up to ``max_batches`` in all of what is already queued.

    Raises ``trio.EndOfChannel`` only when the channel is closed and nothing was received.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    batches = [await receiver.receive()]
    while len(batches) < max_batches:
        try:
            batches.append(receiver.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batches
