"""Capture: every frame a connection receives, with its receive time, in rotating zstd JSON-lines files.

`marketflow replay` feeds such files through the whole pipeline again (`replay.py`). One file stream per
connection (`<connection>-<UTC stamp>-<seq>.jsonl.zst`) and one per exchange market for REST answers
(`rest-<exchange>-<market>-…`); every file is self-contained:

    {"type":"header","version":1,"kind":"ws","feed":"bybit-spot","exchange":"bybit","market":"spot",
     "url":"wss://…","started":1786270000000000,"seq":0,"topics":[…],"config":{…the feed's config…}}
    {"recv":1786270000012345,"frame":"{\"topic\":\"publicTrade.BTCUSDT\",…}"}      one frame, text as received
    {"type":"event","recv":…,"event":"disconnected"}                                 connection lost
    {"type":"event","recv":…,"event":"reconnected","down_since":…}                   streaming again
    {"type":"rest","recv":…,"url":"http://…/api/v3/depth?symbol=BTCUSDT&limit=1000","status":200,"body":"…"}

Frames that are not UTF-8 are written as `"frame_b64"`. Everything the socket yields is kept (acks, pongs,
malformed frames), so a replay sees what the daemon saw.

The feeds never wait for the disk: they hand each socket read to `Capture.frames()`, which puts it on a
bounded channel without blocking (when it is full the read is dropped and counted). The `CaptureWriter`
actor drains the channel in batches and encodes, compresses and writes each batch in a worker thread. Every
`FLUSH_INTERVAL_S` it ends a zstd block, so a crash loses at most about a second and a killed daemon leaves
files that decompress up to their last flush; rotation and shutdown end the zstd frame, so closed files are
complete streams. Old files are deleted beyond `capture.max_total_mb`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgspec
import trio
import zstandard

from marketflow.config import CaptureConfig, FeedConfig
from marketflow.model import now_us
from marketflow.pipeline.rest import REQUEST_TIMEOUT_S

log = logging.getLogger("marketflow.capture")

FORMAT_VERSION = 1
SUFFIX = ".jsonl.zst"
FLUSH_INTERVAL_S = 1.0
QUEUE_CAPACITY = 4096  # socket reads (each a list of frames) waiting for the writer
DROP_LOG_INTERVAL_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


# ------------------------------------------------------------------------------------------ file format


class FeedSpec(msgspec.Struct, kw_only=True):
    """The configured feed a captured connection belongs to (what replay needs to rebuild its pipeline)."""

    name: str
    exchange: str
    market: str
    symbols: list[str]
    channels: list[str]
    book_depth: int
    ws_url: str | None = None
    rest_url: str | None = None

    @classmethod
    def of(cls, feed: FeedConfig) -> FeedSpec:
        return cls(
            name=feed.name,
            exchange=feed.exchange,
            market=feed.market,
            symbols=list(feed.symbols),
            channels=list(feed.channels),
            book_depth=feed.book_depth,
            ws_url=feed.ws_url,
            rest_url=feed.rest_url,
        )

    def feed_config(self) -> FeedConfig:
        return FeedConfig(
            exchange=self.exchange,
            market=self.market,
            symbols=tuple(self.symbols),
            channels=tuple(self.channels),
            book_depth=self.book_depth,
            ws_url=self.ws_url,
            rest_url=self.rest_url,
            name=self.name,
        )


class Header(msgspec.Struct, kw_only=True):
    """The first line of every capture file."""

    type: str = "header"
    version: int = FORMAT_VERSION
    kind: str  # ws | rest
    feed: str  # the connection (ws) or `rest-<exchange>-<market>`
    exchange: str
    market: str
    url: str
    started: int = 0
    seq: int = 0
    topics: list[str] = []
    config: FeedSpec | None = None


class Record(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every line after the header: a frame (no `type`), an event or a REST answer."""

    type: str = "frame"
    recv: int
    frame: str | None = None
    frame_b64: str | None = None
    event: str | None = None
    down_since: int | None = None
    url: str | None = None
    status: int | None = None
    body: str | None = None
    body_b64: str | None = None

    def frame_bytes(self) -> bytes:
        if self.frame is not None:
            return self.frame.encode()
        return base64.b64decode(self.frame_b64 or "")

    def body_bytes(self) -> bytes:
        if self.body is not None:
            return self.body.encode()
        return base64.b64decode(self.body_b64 or "")


class CaptureFileError(Exception):
    """A capture file cannot be read (further); the message names the file and line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {reason}")


_header_decoder = msgspec.json.Decoder(Header)
_record_decoder = msgspec.json.Decoder(Record)
READ_CHUNK = 1 << 16


class CaptureReader:
    """Reads one capture file: `header` at once, then `records()` lazily.

    A corrupt line or zstd data raises `CaptureFileError` (what came before was yielded). A file that simply
    ends early — the writer was killed, or is still writing it — is not an error: `records()` stops at the
    last complete line and `truncated` says why (SIGKILL loses at most the last flush interval).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.truncated: str | None = None
        self.lines = 0
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by records() or close()
        except OSError as exc:
            raise CaptureFileError(self.path, None, f"cannot open: {exc.strerror or exc}") from None
        self._lines = self._read_lines()
        try:
            first = next(self._lines, None)
        except CaptureFileError:
            self.close()
            raise
        if first is None:
            self.close()
            raise CaptureFileError(self.path, None, self.truncated or "empty file: not a capture")
        try:
            self.header = _header_decoder.decode(first)
        except msgspec.DecodeError as exc:
            self.close()
            raise CaptureFileError(self.path, 1, f"not a capture header: {exc}") from None
        if self.header.type != "header":
            self.close()
            raise CaptureFileError(self.path, 1, "the first line is not a capture header")
        if self.header.version != FORMAT_VERSION:
            self.close()
            raise CaptureFileError(
                self.path, 1, f"capture format version {self.header.version} is not {FORMAT_VERSION}"
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self) -> Iterator[Record]:
        """The records after the header, in file order."""
        try:
            for line in self._lines:
                try:
                    record = _record_decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise CaptureFileError(self.path, self.lines, f"corrupt record: {exc}") from None
                yield record
        finally:
            self.close()

    def _read_lines(self) -> Iterator[bytes]:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        pending = b""
        while True:
            chunk = self._file.read(READ_CHUNK)
            if not chunk:
                break
            try:
                data = decompressor.decompress(chunk)
                while decompressor.eof and decompressor.unused_data:  # concatenated zstd frames
                    rest = decompressor.unused_data
                    decompressor = zstandard.ZstdDecompressor().decompressobj()
                    data += decompressor.decompress(rest)
            except zstandard.ZstdError as exc:
                raise CaptureFileError(self.path, self.lines + 1, f"corrupt zstd data: {exc}") from None
            pending += data
            lines = pending.split(b"\n")
            pending = lines.pop()
            for line in lines:
                self.lines += 1
                yield line
        if not decompressor.eof or pending:
            self.truncated = (
                f"the zstd stream ends early after line {self.lines} (the writer did not close this file; "
                "records up to there are read)"
            )


def file_name(stream: str, started_us: int, seq: int) -> str:
    """`binance-usdm/market`, 2026-08-09 12:00:19 → `binance-usdm_market-20260809T120019Z-0.jsonl.zst`"""
    stamp = datetime.fromtimestamp(started_us // 1_000_000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{_UNSAFE.sub('_', stream)}-{stamp}-{seq}{SUFFIX}"


# --------------------------------------------------------------------------------------------- writing


@attrs.frozen
class CaptureStatistics:
    name: str
    state: str
    frames: int  # frames written
    records: int  # everything written after the headers (frames, events, REST answers)
    dropped: int  # frames dropped because the writer could not keep up
    queued: int
    bytes_in: int  # uncompressed
    bytes_out: int  # compressed, in files closed or flushed
    files_opened: int
    files_deleted: int
    directory: str
    current_files: dict[str, str]
    last_error: str | None


# One channel item: (stream, recv µs, frames | rest record | event record)
_Item = tuple[str, int, list[bytes] | Record]


@attrs.define
class _Counters:
    frames: int = 0
    records: int = 0
    dropped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    files_opened: int = 0
    files_deleted: int = 0
    last_error: str | None = None
    state: str = "idle"
    current_files: dict[str, str] = attrs.Factory(dict)


class Capture:
    """The long-lived side of capturing: what feeds and REST clients call, and the writer's queue.

    It outlives writer restarts (the supervisor builds a fresh `CaptureWriter` with `writer()`), so frames
    queued while the writer restarts are not lost.
    """

    def __init__(self, config: CaptureConfig, state_dir: str, *, capacity: int = QUEUE_CAPACITY) -> None:
        self.config = config
        self.directory = Path(config.dir) if config.dir is not None else Path(state_dir) / "capture"
        self._send, self._receive = trio.open_memory_channel[_Item](capacity)
        self.headers: dict[str, Header] = {}
        self.counters = _Counters()
        self._seq: dict[str, int] = {}
        self._dropped_logged_at = float("-inf")

    # -- registration (the daemon, when it plans connections) ----------------------------------------

    def add_connection(self, name: str, feed: FeedConfig, url: str, topics: tuple[str, ...]) -> None:
        self.headers[name] = Header(
            kind="ws",
            feed=name,
            exchange=feed.exchange,
            market=feed.market,
            url=url,
            topics=list(topics),
            config=FeedSpec.of(feed),
        )

    def http_client(self, exchange: str, market: str, base_url: str) -> httpx.AsyncClient:
        """An HTTP client for a `RestClient` that captures every answer (Binance book snapshots, backfill)."""
        stream = f"rest-{exchange}-{market}"
        self.headers[stream] = Header(
            kind="rest", feed=stream, exchange=exchange, market=market, url=base_url
        )

        async def record(response: httpx.Response) -> None:
            await response.aread()
            self.rest(stream, str(response.request.url), response.status_code, response.content)

        return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, event_hooks={"response": [record]})

    # -- the calls on the data path: never block ------------------------------------------------------

    def frames(self, stream: str, recv: int, messages: list[bytes]) -> None:
        """One socket read of a connection (data and control frames alike)."""
        self._put((stream, recv, messages), len(messages))

    def rest(self, stream: str, url: str, status: int, body: bytes) -> None:
        record = Record(type="rest", recv=now_us(), url=url, status=status)
        try:
            record.body = body.decode()
        except UnicodeDecodeError:
            record.body_b64 = base64.b64encode(body).decode()
        self._put((stream, record.recv, record), 1)

    def event(self, stream: str, event: str, *, down_since: int | None = None) -> None:
        now = now_us()
        self._put((stream, now, Record(type="event", recv=now, event=event, down_since=down_since)), 1)

    def feed_events(
        self,
        on_reconnect: Callable[[str, int, int], None],
        on_disconnect: Callable[[str], None],
    ) -> tuple[Callable[[str, int, int], None], Callable[[str], None]]:
        """Wrap a feed's reconnect/disconnect callbacks so the events are captured too."""

        def reconnected(name: str, down_since: int, up_at: int) -> None:
            record = Record(type="event", recv=up_at, event="reconnected", down_since=down_since)
            self._put((name, up_at, record), 1)
            on_reconnect(name, down_since, up_at)

        def disconnected(name: str) -> None:
            self.event(name, "disconnected")
            on_disconnect(name)

        return reconnected, disconnected

    def _put(self, item: _Item, frames: int) -> None:
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.counters.dropped += frames
            now = time.monotonic()
            if now - self._dropped_logged_at >= DROP_LOG_INTERVAL_S:
                self._dropped_logged_at = now
                log.warning(
                    "capture cannot keep up; frames dropped from the capture (not from the pipeline)",
                    extra={"dropped_total": self.counters.dropped},
                )

    # -- the actor ------------------------------------------------------------------------------------

    def writer(self) -> CaptureWriter:
        return CaptureWriter(self)

    def close(self) -> None:
        """No more items: the writer drains the queue, closes its files and returns."""
        self._send.close()

    def next_seq(self, stream: str) -> int:
        seq = self._seq.get(stream, 0)
        self._seq[stream] = seq + 1
        return seq

    def statistics(self) -> CaptureStatistics:
        c = self.counters
        return CaptureStatistics(
            name="capture",
            state=c.state,
            frames=c.frames,
            records=c.records,
            dropped=c.dropped,
            queued=self._receive.statistics().current_buffer_used,
            bytes_in=c.bytes_in,
            bytes_out=c.bytes_out,
            files_opened=c.files_opened,
            files_deleted=c.files_deleted,
            directory=str(self.directory),
            current_files=dict(c.current_files),
            last_error=c.last_error,
        )


@attrs.define(eq=False)
class _OpenFile:
    path: Path
    writer: Any  # zstandard.ZstdCompressionWriter
    opened_at: float  # trio time
    bytes_in: int = 0
    records: int = 0
    unflushed: bool = False


class CaptureWriter:
    """Drains the capture queue in batches; encodes, compresses and writes them in a worker thread."""

    def __init__(self, capture: Capture, *, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.name = "capture"
        self._capture = capture
        self._config = capture.config
        self._flush_interval_s = flush_interval_s
        self._files: dict[str, _OpenFile] = {}
        self._encoder = msgspec.json.Encoder()

    def statistics(self) -> CaptureStatistics:
        return self._capture.statistics()

    def request_stop(self) -> None:
        self._capture.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        capture = self._capture
        receive = capture._receive
        await trio.to_thread.run_sync(lambda: capture.directory.mkdir(parents=True, exist_ok=True))
        capture.counters.state = "running"
        task_status.started()
        next_flush = trio.current_time() + self._flush_interval_s
        try:
            while True:
                items: list[_Item] = []
                ended = False
                with trio.move_on_at(next_flush):
                    try:
                        items.append(await receive.receive())
                    except trio.EndOfChannel:
                        ended = True
                while not ended:
                    try:
                        items.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        ended = True
                now = trio.current_time()
                flush = now >= next_flush
                if items or flush:
                    await trio.to_thread.run_sync(self._write, items, flush, now)
                if flush:
                    next_flush = now + self._flush_interval_s
                if ended:
                    return
        except OSError as exc:
            capture.counters.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            # Closed files are complete zstd streams; done even when cancelled (it is only file I/O).
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_all)
            capture.counters.state = "stopped"

    # -- in the worker thread (one call at a time) ------------------------------------------------------

    def _write(self, items: list[_Item], flush: bool, now: float) -> None:
        counters = self._capture.counters
        encode = self._encoder.encode
        for stream, recv, payload in items:
            out = self._file_for(stream, now)
            if out is None:
                continue  # a stream nobody registered: nothing to say what it is
            if isinstance(payload, Record):
                chunk = encode(payload) + b"\n"
            else:
                lines = []
                for message in payload:
                    try:
                        lines.append(encode(Record(recv=recv, frame=message.decode())))
                    except UnicodeDecodeError:
                        lines.append(encode(Record(recv=recv, frame_b64=base64.b64encode(message).decode())))
                lines.append(b"")
                chunk = b"\n".join(lines)
                counters.frames += len(payload)
            count = 1 if isinstance(payload, Record) else len(payload)
            out.writer.write(chunk)
            out.bytes_in += len(chunk)
            out.records += count
            out.unflushed = True
            counters.records += count
            counters.bytes_in += len(chunk)
            if out.bytes_in >= self._config.rotate_mb * 1_000_000:
                self._close(stream)
        for stream, out in list(self._files.items()):
            if out.records and now - out.opened_at >= self._config.rotate_s:
                self._close(stream)
            elif flush and out.unflushed:
                before = out.writer.tell()
                out.writer.flush(zstandard.FLUSH_BLOCK)
                counters.bytes_out += out.writer.tell() - before
                out.unflushed = False

    def _file_for(self, stream: str, now: float) -> _OpenFile | None:
        out = self._files.get(stream)
        if out is not None and out.records and now - out.opened_at >= self._config.rotate_s:
            self._close(stream)  # too old for more records, whenever the last flush happened
            out = None
        if out is not None:
            return out
        capture = self._capture
        template = capture.headers.get(stream)
        if template is None:
            return None
        started = now_us()
        header = msgspec.structs.replace(template, started=started, seq=capture.next_seq(stream))
        path = capture.directory / file_name(stream, started, header.seq)
        while path.exists():  # a restart within the same second
            header = msgspec.structs.replace(header, seq=capture.next_seq(stream))
            path = capture.directory / file_name(stream, started, header.seq)
        handle = open(path, "xb")  # noqa: SIM115 - owned by the zstd writer, closed in _close
        # One compressor per file: a zstd context serves one stream at a time.
        compressor = zstandard.ZstdCompressor(level=self._config.level, write_checksum=True)
        writer = compressor.stream_writer(handle, closefd=True)
        first = self._encoder.encode(header) + b"\n"
        writer.write(first)
        out = _OpenFile(path, writer, now, bytes_in=len(first), unflushed=True)
        self._files[stream] = out
        capture.counters.files_opened += 1
        capture.counters.current_files[stream] = str(path)
        return out

    def _close(self, stream: str) -> None:
        out = self._files.pop(stream)
        counters = self._capture.counters
        counters.current_files.pop(stream, None)
        before = out.writer.tell()
        out.writer.flush(zstandard.FLUSH_FRAME)
        counters.bytes_out += out.writer.tell() - before
        out.writer.close()
        self._enforce_retention()

    def _close_all(self) -> None:
        for stream in list(self._files):
            try:
                self._close(stream)
            except OSError as exc:
                self._capture.counters.last_error = f"{type(exc).__name__}: {exc}"
                log.error("capture file not closed cleanly", extra={"stream": stream, "error": str(exc)})

    def _enforce_retention(self) -> None:
        """Delete the oldest closed capture files while all of them take more than `max_total_mb`."""
        limit = self._config.max_total_mb * 1_000_000
        if limit <= 0:
            return
        open_paths = {out.path for out in self._files.values()}
        files = []
        for path in self._capture.directory.glob("*" + SUFFIX):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, path.name, path, st.st_size))
        total = sum(size for *_, size in files)
        for _, _, path, size in sorted(files):
            if total <= limit:
                break
            if path in open_paths:
                continue
            path.unlink(missing_ok=True)
            total -= size
            self._capture.counters.files_deleted += 1
