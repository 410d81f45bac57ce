"""The disk spool: batches the database (or NATS) cannot take yet, kept durably and replayed in order.

`Spool` holds trades (the storage writer's, the NATS collector's); `RecordSpool(directory, type)` holds
batches of any msgspec record (the record sinks' overflow, `runtime/sink.py`), in the same format.

Layout: `<directory>/<20-digit sequence>.spool` segment files, replayed in name order, each a run of records:

    magic "MFSPOOL1" | payload length u32 | trade count u32 | first recv_ts i64 | payload CRC32 u32
    | CRC32 of those 28 header bytes u32 | payload (msgpack list of Trade, or of the spool's record type)

(For other records "trade count" is the record count and "first recv_ts" the first record's `stamp`, or 0.)

Every record is written whole (short writes are continued) and fsynced before `append` returns. A write
that fails (disk full, I/O error) is cut off again: the segment is truncated back to its last good record,
or, if even that fails, left behind and the next record starts a new segment; the caller gets `SpoolError`
and still holds the batch. A SIGKILL leaves at most a torn last record. Whatever the cause, the reader
trusts nothing a bad record says: after one it resumes at the next record whose header checksum and payload
checksum both verify, so every good record after damage is kept. Damage is logged and counted; a segment
that had any is renamed `*.corrupt` (kept for inspection) instead of deleted once its good records are in
the database. A replayed segment that cannot be deleted is reported and deleted later; replaying it again
after a restart only rewrites rows the database already has: trade writes are idempotent.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Generic, TypeVar

import attrs
import msgspec
import trio

from marketflow.model import Trade
from marketflow.runtime.spill import SpillError

log = logging.getLogger("marketflow.storage.spool")

MAGIC: Final = b"MFSPOOL1"
_HEADER: Final = struct.Struct("<8sIIqI")
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = _HEADER.size + _CRC.size
SUFFIX: Final = ".spool"
FIRST_SEGMENT: Final = 10**12  # leaves room below for segments written in front (shutdown flushes)
SEGMENT_MAX_BYTES: Final = 8 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()

R = TypeVar("R")


_FULL_DISK: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class SpoolError(SpillError):
    """The spool directory or a segment could not be written or read (disk full, permissions, ...).

    `errno` is the operating system's error number when there is one.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def disk_full(self) -> bool:
        """The file system (or a quota, or a file size limit) has no room for the write."""
        return self.errno in _FULL_DISK


@attrs.frozen
class SpoolRecord:
    segment: int
    offset: int
    length: int
    count: int
    first_recv_ts: int


@attrs.frozen
class SpoolDamage:
    """Bytes of a segment that are not a valid record and were skipped."""

    path: str
    offset: int
    skipped_bytes: int
    reason: str


@attrs.frozen
class SpoolStatistics:
    directory: str
    records: int
    trades: int
    bytes: int
    segments: int
    appended_trades: int
    replayed_trades: int
    corrupt_records: int
    oldest_recv_ts: int | None
    write_errors: int = 0
    remove_errors: int = 0


def encode_record(batch: Sequence[Trade]) -> bytes:
    return _encode(batch, batch[0].recv_ts if batch else 0)


def _encode(batch: Sequence[object], first: int) -> bytes:
    payload = _encoder.encode(batch if isinstance(batch, list) else list(batch))
    header = _HEADER.pack(MAGIC, len(payload), len(batch), first, zlib.crc32(payload))
    return header + _CRC.pack(zlib.crc32(header)) + payload


def _header_at(data: bytes | memoryview, pos: int) -> tuple[int, int, int, int] | None:
    """(length, count, first_recv_ts, payload crc) of a valid header at `pos`, else None."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, length, count, first, payload_crc = _HEADER.unpack_from(data, pos)
    (header_crc,) = _CRC.unpack_from(data, pos + _HEADER.size)
    if magic != MAGIC or zlib.crc32(data[pos : pos + _HEADER.size]) != header_crc:
        return None
    return length, count, first, payload_crc


def _record_at(view: memoryview, pos: int) -> tuple[int, int, int] | None:
    """(payload length, count, first recv_ts) of a whole, verified record at `pos`, else None."""
    header = _header_at(view, pos)
    if header is None:
        return None
    length, count, first, payload_crc = header
    start = pos + HEADER_SIZE
    if start + length > len(view) or zlib.crc32(view[start : start + length]) != payload_crc:
        return None
    return length, count, first


def _next_record(data: bytes, view: memoryview, pos: int) -> int:
    """Offset of the first whole, verified record at or after `pos`, else the end of the data."""
    nxt = data.find(MAGIC, pos)
    while nxt != -1 and _record_at(view, nxt) is None:
        nxt = data.find(MAGIC, nxt + 1)
    return len(data) if nxt == -1 else nxt


def scan_segment(data: bytes) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, str]]]:
    """Valid records as (offset, payload length, count, first recv_ts) and damage as (offset, bytes, why).

    Nothing a bad record says is trusted, not even a header that checks out: after any bad record the scan
    resumes at the next whole record whose header and payload both verify. A write cut short by a full disk
    leaves a good header over a partial payload, and the records after it must not be skipped by that
    header's length.
    """
    records: list[tuple[int, int, int, int]] = []
    damage: list[tuple[int, int, str]] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        record = _record_at(view, pos)
        if record is not None:
            length, count, first = record
            records.append((pos, length, count, first))
            pos += HEADER_SIZE + length
            continue
        nxt = _next_record(data, view, pos + 1)
        damage.append((pos, nxt - pos, _why_damaged(data, view, pos, nxt)))
        pos = nxt
    return records, damage


def _why_damaged(data: bytes, view: memoryview, pos: int, nxt: int) -> str:
    header = _header_at(view, pos)
    if header is None:
        if nxt == len(data) and len(data) - pos < HEADER_SIZE and MAGIC.startswith(data[pos : pos + 8]):
            return "torn record at the end (write interrupted)"
        return "damaged record header"
    end = pos + HEADER_SIZE + header[0]
    if end > len(data):
        return "torn record at the end (write interrupted)" if nxt == len(data) else "record cut short"
    return "record cut short" if nxt < end else "payload checksum mismatch"


def read_spool(directory: str | os.PathLike[str]) -> list[list[Trade]]:
    """Every valid record's trades, oldest first, without changing anything (for tools and tests)."""
    return read_records(directory, Trade)


def read_records(directory: str | os.PathLike[str], record_type: type[R]) -> list[list[R]]:
    """Every valid record's batch of `record_type`, oldest first, without changing anything."""
    decoder = msgspec.msgpack.Decoder(list[record_type])  # type: ignore[valid-type]
    batches: list[list[R]] = []
    for path in sorted(Path(directory).glob("*" + SUFFIX)):
        data = path.read_bytes()
        records, _ = scan_segment(data)
        for offset, length, _count, _first in records:
            start = offset + HEADER_SIZE
            batches.append(decoder.decode(data[start : start + length]))
    return batches


class RecordSpool(Generic[R]):
    """An append-only, checksummed, fsynced FIFO of batches of `record_type` (msgspec Structs) in one
    directory; `stamp` gives a record's time for the statistics (`oldest_recv_ts`).

    One actor owns it. File work runs in one worker thread at a time; a lock keeps appends,
    front-writes and consumption from interleaving.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        record_type: type[R],
        *,
        stamp: Callable[[R], int] | None = None,
        segment_max_bytes: int = SEGMENT_MAX_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self._decoder: msgspec.msgpack.Decoder[list[R]] = msgspec.msgpack.Decoder(
            list[record_type]  # type: ignore[valid-type]
        )
        self._stamp: Callable[[R], int] = stamp if stamp is not None else (lambda _: 0)
        self._segment_max_bytes = segment_max_bytes
        self._index: deque[SpoolRecord] = deque()
        self._per_segment: dict[int, int] = {}  # segment -> records not yet consumed
        self._damaged: set[int] = set()
        self._active: int | None = None  # segment being appended to by this process
        self._active_fd: int | None = None
        self._active_size = 0
        self._highest = FIRST_SEGMENT - 1  # segment numbers are never reused within a run
        self._unremoved: set[int] = set()  # replayed (or abandoned) segments whose removal failed
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._trades = 0
        self._bytes = 0
        self._appended = 0
        self._replayed = 0
        self._corrupt = 0
        self._write_errors = 0
        self._remove_errors = 0

    # -- state --------------------------------------------------------------------------------------------

    @property
    def trades(self) -> int:
        """Trades (records) in the spool, not yet in the database."""
        return self._trades

    @property
    def held(self) -> int:
        """Records in the spool (trades, for a trade spool), not yet replayed."""
        return self._trades

    def __bool__(self) -> bool:
        return bool(self._index)

    def statistics(self) -> SpoolStatistics:
        return SpoolStatistics(
            directory=str(self.directory),
            records=len(self._index),
            trades=self._trades,
            bytes=self._bytes,
            segments=len(self._per_segment),
            appended_trades=self._appended,
            replayed_trades=self._replayed,
            corrupt_records=self._corrupt,
            oldest_recv_ts=self._index[0].first_recv_ts if self._index else None,
            write_errors=self._write_errors,
            remove_errors=self._remove_errors,
        )

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:020d}{SUFFIX}"

    # -- open / close -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and index what a previous run left (damage is reported and skipped)."""
        found = await trio.to_thread.run_sync(self._scan_sync, limiter=self._limiter)
        for segment, records, damage in found:
            self._highest = max(self._highest, segment)
            path = str(self._path(segment))
            for offset, skipped, reason in damage:
                self._report(SpoolDamage(path, offset, skipped, reason))
            if damage:
                self._damaged.add(segment)
            for offset, length, count, first in records:
                self._add(SpoolRecord(segment, offset, length, count, first), front=False)
            if not records:
                await self._retire(segment)
        if self._index:
            log.warning(
                "spool holds trades from an earlier run; they are written first",
                extra={"spool": str(self.directory), "trades": self._trades, "records": len(self._index)},
            )

    def _scan_sync(self) -> list[tuple[int, list[tuple[int, int, int, int]], list[tuple[int, int, str]]]]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            return [
                (int(path.stem), *scan_segment(path.read_bytes()))
                for path in sorted(self.directory.glob("*" + SUFFIX))
                if path.stem.isdigit()
            ]
        except OSError as exc:
            raise SpoolError(f"cannot read the spool {self.directory}: {exc}", exc.errno) from exc

    def _report(self, damage: SpoolDamage) -> None:
        self._corrupt += 1
        log.error(
            "spool record damaged; skipped, later records kept",
            extra={
                "path": damage.path,
                "offset": damage.offset,
                "skipped_bytes": damage.skipped_bytes,
                "reason": damage.reason,
            },
        )

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._close_active_sync, limiter=self._limiter)

    def _close_active_sync(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        self._active = None

    # -- writing ------------------------------------------------------------------------------------------

    async def append(self, batch: Sequence[R]) -> None:
        """Add a batch after everything spooled; returns once it is on disk (fsynced).

        Raises `SpoolError` (nothing of the batch is kept) when it cannot be written whole.
        """
        if not batch:
            return
        data = _encode(batch, self._stamp(batch[0]))
        async with self._lock:
            try:
                segment, offset = await trio.to_thread.run_sync(
                    self._append_sync, data, limiter=self._limiter
                )
            except SpoolError:
                self._write_errors += 1
                raise
            record = SpoolRecord(segment, offset, len(data) - HEADER_SIZE, len(batch), self._stamp(batch[0]))
            self._add(record)
            self._appended += len(batch)

    def _append_sync(self, data: bytes) -> tuple[int, int]:
        try:
            if self._active_fd is not None and self._active_size + len(data) > self._segment_max_bytes:
                self._close_active_sync()
            if self._active_fd is None:
                self._open_active_sync()
            assert self._active is not None and self._active_fd is not None
            offset = self._active_size
            try:
                _write_all(self._active_fd, data)
                os.fsync(self._active_fd)
            except OSError:
                self._cut_back_sync(offset)
                raise
            self._active_size += len(data)
            return self._active, offset
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}", exc.errno) from exc

    def _open_active_sync(self) -> None:
        self._highest = max([self._highest, *self._per_segment, *self._unremoved]) + 1
        self._active = self._highest
        self._active_fd = os.open(
            self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600
        )
        self._active_size = 0
        try:
            self._fsync_directory()
        except OSError:
            self._close_active_sync()  # an empty segment is harmless: the next open retires it
            raise

    def _cut_back_sync(self, offset: int) -> None:
        """A write failed: remove its bytes, so the segment ends with its last good record again."""
        assert self._active_fd is not None
        try:
            os.ftruncate(self._active_fd, offset)
            os.fsync(self._active_fd)
        except OSError as exc:
            # The torn bytes stay at the end of this segment (the reader skips them); start a new one.
            log.error(
                "cannot cut a failed spool write off its segment; continuing in a new segment",
                extra={"path": str(self._path(self._active or 0)), "error": str(exc)},
            )
            if self._active not in self._per_segment:
                self._unremoved.add(self._active or 0)  # holds no record: delete it with the next one
            self._close_active_sync()

    async def prepend(self, batches: Sequence[Sequence[R]]) -> None:
        """Put batches in front of everything spooled (in the order given), durably.

        For the writer: batches it held in memory are older than what it had spooled. All or nothing:
        raises `SpoolError` (and leaves no trace of the batches) when they cannot all be written.
        """
        batches = [b for b in batches if b]
        if not batches:
            return
        async with self._lock:
            taken = self._per_segment.keys() | self._unremoved | {self._active or self._highest + 1}
            segment = min(taken) - 1
            try:
                records = await trio.to_thread.run_sync(
                    self._write_segment_sync, segment, batches, limiter=self._limiter
                )
            except SpoolError:
                self._write_errors += 1
                raise
            # appendleft one by one reverses: the first batch given must end up first
            for record in reversed(records):
                self._add(record, front=True)
            self._appended += sum(r.count for r in records)

    def _write_segment_sync(self, segment: int, batches: list[Sequence[R]]) -> list[SpoolRecord]:
        records = []
        path = self._path(segment)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}", exc.errno) from exc
        try:
            try:
                offset = 0
                for batch in batches:
                    first = self._stamp(batch[0])
                    data = _encode(batch, first)
                    _write_all(fd, data)
                    records.append(SpoolRecord(segment, offset, len(data) - HEADER_SIZE, len(batch), first))
                    offset += len(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._fsync_directory()
        except OSError as exc:
            # Nothing of a failed prepend may be replayed later: the caller still holds these batches.
            try:
                path.unlink()
            except OSError as unlink_exc:
                self._unremoved.add(segment)
                log.error(
                    "cannot remove a failed spool segment; removing it later",
                    extra={"path": str(path), "error": str(unlink_exc)},
                )
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}", exc.errno) from exc
        return records

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _add(self, record: SpoolRecord, *, front: bool = False) -> None:
        if front:
            self._index.appendleft(record)
        else:
            self._index.append(record)
        self._per_segment[record.segment] = self._per_segment.get(record.segment, 0) + 1
        self._trades += record.count
        self._bytes += HEADER_SIZE + record.length

    # -- replaying ----------------------------------------------------------------------------------------

    async def peek(self) -> list[R] | None:
        """The oldest batch (still spooled until `consume()`), or None when the spool is empty.

        A record damaged since it was indexed is reported and dropped here, and the next one returned.
        """
        while self._index:
            record = self._index[0]
            batch = await trio.to_thread.run_sync(self._read_sync, record, limiter=self._limiter)
            if batch is not None:
                return batch
            self._report(
                SpoolDamage(str(self._path(record.segment)), record.offset, record.length, "unreadable")
            )
            self._damaged.add(record.segment)
            await self.consume(replayed=False)
        return None

    def _read_sync(self, record: SpoolRecord) -> list[R] | None:
        try:
            with open(self._path(record.segment), "rb") as f:
                f.seek(record.offset)
                data = f.read(HEADER_SIZE + record.length)
        except OSError as exc:
            raise SpoolError(f"cannot read the spool {self.directory}: {exc}", exc.errno) from exc
        header = _header_at(data, 0)
        if header is None or header[0] != record.length or len(data) != HEADER_SIZE + record.length:
            return None
        payload = data[HEADER_SIZE:]
        if zlib.crc32(payload) != header[3]:
            return None
        try:
            return self._decoder.decode(payload)
        except msgspec.DecodeError:
            return None

    async def consume(self, *, replayed: bool = True) -> None:
        """Drop the oldest batch: it is in the database. Deletes segments that are done."""
        async with self._lock:
            record = self._index.popleft()
            self._trades -= record.count
            self._bytes -= HEADER_SIZE + record.length
            if replayed:
                self._replayed += record.count
            left = self._per_segment[record.segment] - 1
            if left:
                self._per_segment[record.segment] = left
                return
            del self._per_segment[record.segment]
            if record.segment == self._active:
                await trio.to_thread.run_sync(self._close_active_sync, limiter=self._limiter)
            await self._retire(record.segment)

    async def _retire(self, segment: int) -> None:
        """A segment is done: delete it (or keep it as `*.corrupt`), with any whose removal failed before.

        A failure is reported, not raised: the segment's trades are in the database, nothing is lost, and
        the writer must go on. It is tried again at the next retirement (a restart replays it once more:
        duplicates only).
        """
        self._unremoved.add(segment)
        for pending in sorted(self._unremoved):
            try:
                await trio.to_thread.run_sync(self._retire_sync, pending, limiter=self._limiter)
            except OSError as exc:
                self._remove_errors += 1
                log.error(
                    "cannot remove a replayed spool segment; trying again later",
                    extra={"path": str(self._path(pending)), "error": f"{type(exc).__name__}: {exc}"},
                )
                continue
            self._unremoved.discard(pending)
            self._damaged.discard(pending)

    def _retire_sync(self, segment: int) -> None:
        path = self._path(segment)
        if segment in self._damaged:
            path.rename(path.with_suffix(".corrupt"))
            log.warning("damaged spool segment kept for inspection", extra={"path": str(path) + ".corrupt"})
        else:
            path.unlink(missing_ok=True)


class Spool(RecordSpool[Trade]):
    """The spool of trade batches (the storage writer's, the NATS collector's)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, segment_max_bytes: int = SEGMENT_MAX_BYTES
    ) -> None:
        super().__init__(directory, Trade, stamp=_recv_ts, segment_max_bytes=segment_max_bytes)


def _recv_ts(trade: Trade) -> int:
    return trade.recv_ts


class RecordSpools:
    """Makes the spill of a record queue: `<directory>/<queue name>/`, a `RecordSpool` of its type."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __call__(self, name: str, record_type: type[R]) -> RecordSpool[R]:
        return RecordSpool(self.directory / name, record_type)


def _write_all(fd: int, data: bytes) -> None:
    """`os.write` until all of `data` is written: a write may take only part (a disk filling up)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, f"write returned {written}")
        view = view[written:]
