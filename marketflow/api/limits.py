"""What one query may take from the others: queries of stored trades run a few at a time, each within a
deadline.

A range of a million stored trades costs seconds of CPU (SQLite streams them into Python accumulators), and
several such queries at once slow each other down on two cores. The gate lets ``limit`` of them run and as
many more wait; a query that finds the queue full is refused at once, and one that is still waiting or
computing when its deadline (counted from its arrival) passes is cancelled — a SQLite scan stops at its next
chunk, a PostgreSQL statement is cancelled on the server. Both answers carry a retry delay (HTTP 503 with
``Retry-After``). Queries the live engine or the trade ring answer never pass the gate.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from marketflow.config import HttpConfig

__all__ = ["StorageQueryGate", "StorageQueryRefused", "StorageQueryStatistics"]

T = TypeVar("T")


@attrs.frozen
class StorageQueryStatistics:
    limit: int
    running: int
    waiting: int
    refused: int
    """Queries turned away because `limit` ran and `limit` more waited."""
    timed_out: int
    """Queries cancelled at their deadline (waiting or computing)."""


class StorageQueryRefused(Exception):
    """The gate turned a query away (`busy`) or cancelled it at its deadline (`query_timeout`)."""

    def __init__(self, code: str, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s


class StorageQueryGate:
    """At most `limit` queries of stored trades at once, `limit` more waiting, each done within
    `timeout_s` of its arrival."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._slots = trio.CapacityLimiter(limit)
        self._waiting = 0
        self._refused = 0
        self._timed_out = 0

    @classmethod
    def of(cls, http: HttpConfig) -> StorageQueryGate:
        return cls(http.max_storage_queries, http.query_timeout_s)

    @property
    def retry_after_s(self) -> int:
        """Seconds after which a slot is surely free again: every query ends by its deadline."""
        return max(1, math.ceil(self.timeout_s))

    def statistics(self) -> StorageQueryStatistics:
        return StorageQueryStatistics(
            self.limit, self._slots.borrowed_tokens, self._waiting, self._refused, self._timed_out
        )

    async def run(self, compute: Callable[[], Awaitable[T]]) -> T:
        """`await compute()` in a slot, within the deadline; :class:`StorageQueryRefused` otherwise."""
        running = False
        with trio.move_on_after(self.timeout_s):
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                if self._waiting >= self.limit:
                    self._refused += 1
                    raise StorageQueryRefused(
                        "busy",
                        f"{self.limit} queries of stored trades are running and {self._waiting} more are "
                        f"waiting (http.max_storage_queries); try again in {self.retry_after_s} s",
                        self.retry_after_s,
                    ) from None
                self._waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
            running = True
            try:
                return await compute()
            finally:
                self._slots.release()
        self._timed_out += 1
        if running:
            detail = (
                f"the query of stored trades took longer than {self.timeout_s:g} s (http.query_timeout_s); "
                "narrow since/until, or use a longer interval or a larger bin"
            )
        else:
            detail = (
                f"no query slot came free within {self.timeout_s:g} s (http.max_storage_queries "
                f"{self.limit}); try again in {self.retry_after_s} s"
            )
        raise StorageQueryRefused("query_timeout" if running else "busy", detail, self.retry_after_s)
