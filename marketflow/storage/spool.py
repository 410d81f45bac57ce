"""The disk spool: trade batches the database cannot take yet, kept durably and replayed in order.

Layout: `<directory>/<20-digit sequence>.spool` segment files, replayed in name order, each a run of records:

    magic "MFSPOOL1" | payload length u32 | trade count u32 | first recv_ts i64 | payload CRC32 u32
    | CRC32 of those 28 header bytes u32 | payload (msgpack list of Trade)

Every record is written with one `write` and an `fsync`, so a SIGKILL leaves at most a torn last record,
which the next open recognises and ignores. The header carries its own checksum, so a damaged length never
sends the reader astray: a record with a damaged header is skipped by searching for the next valid header,
one with a damaged payload by its (checked) length; the records after it are kept either way. Damage is
logged and counted; a segment that had any is renamed `*.corrupt` (kept for inspection) instead of deleted
once its good records are in the database. Replaying a partly replayed segment again after a crash only
rewrites rows the database already has: trade writes are idempotent.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
import msgspec
import trio

from marketflow.model import Trade

log = logging.getLogger("marketflow.storage.spool")

MAGIC: Final = b"MFSPOOL1"
_HEADER: Final = struct.Struct("<8sIIqI")
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = _HEADER.size + _CRC.size
SUFFIX: Final = ".spool"
FIRST_SEGMENT: Final = 10**12  # leaves room below for segments written in front (shutdown flushes)
SEGMENT_MAX_BYTES: Final = 8 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Trade])


class SpoolError(Exception):
    """The spool directory or a segment could not be written or read (disk full, permissions, ...)."""


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


def encode_record(batch: Sequence[Trade]) -> bytes:
    payload = _encoder.encode(batch if isinstance(batch, list) else list(batch))
    first = batch[0].recv_ts if batch else 0
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


def scan_segment(data: bytes) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, str]]]:
    """Valid records as (offset, payload length, count, first recv_ts) and damage as (offset, bytes, why)."""
    records: list[tuple[int, int, int, int]] = []
    damage: list[tuple[int, int, str]] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        header = _header_at(view, pos)
        if header is None:
            if len(data) - pos < HEADER_SIZE and MAGIC.startswith(data[pos : pos + len(MAGIC)]):
                damage.append((pos, len(data) - pos, "torn record at the end (write interrupted)"))
                break
            nxt = data.find(MAGIC, pos + 1)
            while nxt != -1 and _header_at(view, nxt) is None:
                nxt = data.find(MAGIC, nxt + 1)
            end = len(data) if nxt == -1 else nxt
            damage.append((pos, end - pos, "damaged record header"))
            pos = end
            continue
        length, count, first, payload_crc = header
        start = pos + HEADER_SIZE
        if start + length > len(data):
            damage.append((pos, len(data) - pos, "torn record at the end (write interrupted)"))
            break
        if zlib.crc32(view[start : start + length]) != payload_crc:
            damage.append((pos, HEADER_SIZE + length, "payload checksum mismatch"))
        else:
            records.append((pos, length, count, first))
        pos = start + length
    return records, damage


def read_spool(directory: str | os.PathLike[str]) -> list[list[Trade]]:
    """Every valid record's trades, oldest first, without changing anything (for tools and tests)."""
    batches: list[list[Trade]] = []
    for path in sorted(Path(directory).glob("*" + SUFFIX)):
        data = path.read_bytes()
        records, _ = scan_segment(data)
        for offset, length, _count, _first in records:
            start = offset + HEADER_SIZE
            batches.append(_decoder.decode(data[start : start + length]))
    return batches


class Spool:
    """An append-only, checksummed, fsynced FIFO of trade batches in one directory.

    One writer actor owns it. File work runs in one worker thread at a time; a lock keeps appends,
    front-writes and consumption from interleaving.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, segment_max_bytes: int = SEGMENT_MAX_BYTES
    ) -> None:
        self.directory = Path(directory)
        self._segment_max_bytes = segment_max_bytes
        self._index: deque[SpoolRecord] = deque()
        self._per_segment: dict[int, int] = {}  # segment -> records not yet consumed
        self._damaged: set[int] = set()
        self._active: int | None = None  # segment being appended to by this process
        self._active_fd: int | None = None
        self._active_size = 0
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._trades = 0
        self._bytes = 0
        self._appended = 0
        self._replayed = 0
        self._corrupt = 0

    # -- state --------------------------------------------------------------------------------------------

    @property
    def trades(self) -> int:
        """Trades in the spool, not yet in the database."""
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
        )

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:020d}{SUFFIX}"

    # -- open / close -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and index what a previous run left (damage is reported and skipped)."""
        found = await trio.to_thread.run_sync(self._scan_sync, limiter=self._limiter)
        for segment, records, damage in found:
            path = str(self._path(segment))
            for offset, skipped, reason in damage:
                self._report(SpoolDamage(path, offset, skipped, reason))
            if damage:
                self._damaged.add(segment)
            for offset, length, count, first in records:
                self._add(SpoolRecord(segment, offset, length, count, first), front=False)
            if not records:
                await trio.to_thread.run_sync(self._retire_sync, segment, limiter=self._limiter)
                self._damaged.discard(segment)
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
            raise SpoolError(f"cannot read the spool {self.directory}: {exc}") from exc

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

    async def append(self, batch: Sequence[Trade]) -> None:
        """Add a batch after everything spooled; returns once it is on disk (fsynced)."""
        if not batch:
            return
        data = encode_record(batch)
        async with self._lock:
            segment, offset = await trio.to_thread.run_sync(self._append_sync, data, limiter=self._limiter)
            self._add(SpoolRecord(segment, offset, len(data) - HEADER_SIZE, len(batch), batch[0].recv_ts))
            self._appended += len(batch)

    def _append_sync(self, data: bytes) -> tuple[int, int]:
        try:
            if self._active_fd is not None and self._active_size + len(data) > self._segment_max_bytes:
                self._close_active_sync()
            if self._active_fd is None:
                highest = max(self._per_segment, default=FIRST_SEGMENT - 1)
                self._active = highest + 1
                self._active_fd = os.open(
                    self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
                )
                self._active_size = 0
                self._fsync_directory()
            offset = self._active_size
            written = os.write(self._active_fd, data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
            os.fsync(self._active_fd)
            self._active_size += len(data)
            assert self._active is not None
            return self._active, offset
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}") from exc

    async def prepend(self, batches: Sequence[Sequence[Trade]]) -> None:
        """Put batches in front of everything spooled (in the order given), durably.

        For the writer's shutdown: batches it held in memory are older than what it had spooled.
        """
        batches = [b for b in batches if b]
        if not batches:
            return
        async with self._lock:
            first = min(self._per_segment, default=self._active or FIRST_SEGMENT)
            segment = first - 1
            records = await trio.to_thread.run_sync(
                self._write_segment_sync, segment, batches, limiter=self._limiter
            )
            for record in reversed(records):
                self._add(record, front=True)
            self._appended += sum(r.count for r in records)

    def _write_segment_sync(self, segment: int, batches: list[Sequence[Trade]]) -> list[SpoolRecord]:
        records = []
        try:
            fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                offset = 0
                for batch in batches:
                    data = encode_record(batch)
                    os.write(fd, data)
                    records.append(
                        SpoolRecord(segment, offset, len(data) - HEADER_SIZE, len(batch), batch[0].recv_ts)
                    )
                    offset += len(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._fsync_directory()
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}") from exc
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

    async def peek(self) -> list[Trade] | None:
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

    def _read_sync(self, record: SpoolRecord) -> list[Trade] | None:
        try:
            with open(self._path(record.segment), "rb") as f:
                f.seek(record.offset)
                data = f.read(HEADER_SIZE + record.length)
        except OSError as exc:
            raise SpoolError(f"cannot read the spool {self.directory}: {exc}") from exc
        header = _header_at(data, 0)
        if header is None or header[0] != record.length or len(data) != HEADER_SIZE + record.length:
            return None
        payload = data[HEADER_SIZE:]
        if zlib.crc32(payload) != header[3]:
            return None
        try:
            return _decoder.decode(payload)
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
            await trio.to_thread.run_sync(self._retire_sync, record.segment, limiter=self._limiter)
            self._damaged.discard(record.segment)

    def _retire_sync(self, segment: int) -> None:
        path = self._path(segment)
        try:
            if segment in self._damaged:
                path.rename(path.with_suffix(".corrupt"))
                log.warning(
                    "damaged spool segment kept for inspection", extra={"path": str(path) + ".corrupt"}
                )
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot remove the replayed spool segment {path}: {exc}") from exc
