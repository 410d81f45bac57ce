"""What a record queue needs of a disk spill: a durable FIFO of record batches (`storage/spool.py` has one).

Kept apart from the spool so that `runtime` imports nothing of ours: the daemon hands each queue the spill
of its name (`SpillFactory`), tests hand it a real spool in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class SpillError(Exception):
    """A spill could not be written or read (disk full, permissions, an I/O error)."""

    @property
    def disk_full(self) -> bool:
        """The file system (or a quota, or a file size limit) has no room for the write."""
        return False


class Spill(Protocol[T]):
    """A durable FIFO of batches: `append` returns once a batch is on disk; `peek` and `consume` replay the
    oldest. Every method may raise `SpillError`; a failed `append` keeps nothing of its batch."""

    @property
    def held(self) -> int:
        """Records on disk, not yet consumed."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, batch: Sequence[T]) -> None: ...

    async def prepend(self, batches: Sequence[Sequence[T]]) -> None:
        """Put batches in front of everything spilled, durably; all or nothing."""
        ...

    async def peek(self) -> list[T] | None: ...

    async def consume(self) -> None: ...


class SpillFactory(Protocol):
    """The spill of a queue, by its name and record type (`storage.spool.RecordSpools`)."""

    def __call__(self, name: str, record_type: type[T]) -> Spill[T]: ...
