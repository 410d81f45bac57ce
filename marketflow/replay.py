"""`marketflow replay FILE…`: captured frames through the whole pipeline again, into a chosen storage.

The daemon's own pipeline is built (`Daemon(config, replay=True)`: normalizer, book keeper, backfill,
analytics, gap ledger, storage writer — no feeds, no HTTP) for the feeds named in the capture headers,
with the `[storage]`, `[books]` and `[analytics]` settings of the configuration. The recorded frames are
published on the raw bus as the feeds would have published them: per connection and socket read, with the
recorded receive time, merged across files in receive-time order. Data frames are told from control frames
by the venue's own session rules; recorded disconnects and reconnects are replayed into the book keeper and
the gap ledger as the feeds would have reported them.

No network is used. REST calls (book snapshots, trade backfill) are answered from the capture's `rest-*`
files, each answer no earlier than it was received; a call the capture does not hold gets a 404 (a
REST-seeded book whose snapshot is not in the given files stays `waiting`, a backfill is recorded as failed).

Time: the pipeline's clock (`model.now_us`, hence gap times, book-snapshot times, candle closing) reads the
recorded time while replaying. Under a `ReplayClock` (the CLI's `--speed fast`, the default) Trio time stands
still until the replay moves it: before each recorded instant it waits until every actor is idle, then
moves the clock to the next timer deadline or to the instant, whichever is first. So the replay runs as fast
as the machine allows and every timer (book snapshots, candle closing, flushes) fires at the same recorded
moment, between the same frames, on every run: the same files give the same rows. Worker threads (SQLite)
may still be busy meanwhile; they only write. Under any other clock, `speed` is the factor of recorded time
and timers fire whenever they do.
"""

from __future__ import annotations

import heapq
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import httpx
import trio
import trio.testing

from marketflow import exchanges
from marketflow.capture import CaptureFileError, CaptureReader, Header, Record
from marketflow.config import Config
from marketflow.daemon import Daemon
from marketflow.exchanges.base import Session, is_data_frame, sequence_marker
from marketflow.model import RawFrames, replay_clock
from marketflow.pipeline.rest import RestClient, WeightBudget
from marketflow.progress import Progress

LEAD_US = 1_000_000  # the pipeline starts this much recorded time before the first frame
SETTLE_S = 1.0  # recorded seconds after the last frame for REST answers and backfills to land
SAVE_POLL_S = 0.05


class ReplayClock(trio.abc.Clock):
    """Trio time that moves only when `jump_to` moves it, until `release()`; then it runs like a real clock.

    Shutdown runs on the released clock, so its deadlines mean real seconds again.
    """

    def __init__(self) -> None:
        self._time = 0.0
        self._released_at: float | None = None

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        if self._released_at is None:
            return self._time
        return self._time + (time.perf_counter() - self._released_at)

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if self._released_at is None:
            # Held: a deadline ahead is reached only by a jump; meanwhile wait for I/O (thread results).
            return 0.0 if deadline <= self._time else 86400.0
        return max(0.0, deadline - self.current_time())

    @property
    def held(self) -> bool:
        return self._released_at is None

    def jump_to(self, when: float) -> None:
        if self._released_at is not None:
            raise RuntimeError("the replay clock runs freely now; it cannot jump")
        self._time = max(self._time, when)

    def release(self) -> None:
        if self._released_at is None:
            self._released_at = time.perf_counter()


@attrs.frozen
class ReplaySummary:
    files: int
    connections: int
    frames: int
    data_frames: int
    events: int
    rest_served: int
    rest_missing: int
    trades: int  # decoded from frames (backfilled trades not included)
    rows_written: int  # new rows in the trades table
    duplicates: int  # trades the storage already held
    books: int
    books_seeded: int  # books that got a snapshot (from a frame or a REST answer)
    book_gaps: int
    gaps: int  # records in the gap ledger
    recorded_s: float
    elapsed_s: float
    storage: str
    truncated: tuple[str, ...]
    errors: tuple[str, ...]

    def text(self) -> str:
        rate = self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"replayed {self.files} files ({self.connections} connections): {self.frames} frames "
            f"({self.data_frames} data, {self.events} events) in {self.elapsed_s:.2f} s, "
            f"{rate:,.0f} frames/s; recorded span {self.recorded_s:.2f} s",
            f"  trades: {self.trades} decoded, {self.rows_written} stored, {self.duplicates} already stored",
            f"  books: {self.books} kept, {self.books_seeded} seeded by a snapshot, {self.book_gaps} gaps; "
            f"gap ledger: {self.gaps} records; REST answers: {self.rest_served} replayed, "
            f"{self.rest_missing} not in the capture",
            f"  storage: {self.storage}",
        ]
        return "\n".join(lines)


class RecordedRest:
    """Answers a `RestClient`'s requests from captured answers, by path and query, in recorded order."""

    def __init__(self, records: list[Record], replay: Replay) -> None:
        self._replay = replay
        self._answers: dict[tuple[str, tuple[tuple[str, str], ...]], deque[Record]] = {}
        for record in records:
            if record.url is not None:
                self._answers.setdefault(_request_key(httpx.URL(record.url)), deque()).append(record)
        self.served = 0
        self.missing = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        answers = self._answers.get(_request_key(request.url))
        if not answers:
            self.missing += 1
            return httpx.Response(404, text=f"{request.url.path} is not in the capture")
        record = answers.popleft()
        await self._replay.until(record.recv)
        self.served += 1
        return httpx.Response(record.status or 200, content=record.body_bytes())


def _request_key(url: httpx.URL) -> tuple[str, tuple[tuple[str, str], ...]]:
    return url.path, tuple(sorted(url.params.multi_items()))


class Replay:
    """One replay of capture files into the configuration's storage; `run()` returns the summary."""

    def __init__(
        self,
        config: Config,
        paths: Sequence[str | os.PathLike[str]],
        *,
        speed: float = 1.0,
        progress: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.paths = [os.fspath(p) for p in paths]
        self.speed = speed
        self._progress = progress
        self._config = config
        self.daemon: Daemon | None = None
        self._base_us = 0
        self._t_base = 0.0
        self.errors: list[str] = []
        self.truncated: list[str] = []
        self._clock: ReplayClock | None = None

    # -- recorded time ---------------------------------------------------------------------------------

    def now_us(self) -> int:
        return self._base_us + round((trio.current_time() - self._t_base) * self.speed * 1e6)

    def _at(self, recv_us: int) -> float:
        return self._t_base + (recv_us - self._base_us) / 1e6 / self.speed

    async def until(self, recv_us: int) -> None:
        """Sleep until the recorded time `recv_us` (a checkpoint even when it has passed)."""
        await trio.sleep_until(self._at(recv_us))

    async def _advance(self, recv_us: int) -> None:
        """The driver's step to the next recorded instant: on a held `ReplayClock`, fire every timer due
        before it, each once the pipeline is idle; on other clocks, sleep until then."""
        clock = self._clock
        if clock is None or not clock.held:
            await self.until(recv_us)
            return
        target = self._at(recv_us)
        while True:
            await trio.testing.wait_all_tasks_blocked()
            due = trio.current_time() + trio.lowlevel.current_statistics().seconds_to_next_deadline
            if due > target:
                break
            clock.jump_to(due)  # timers due at the instant itself fire before its frames
        clock.jump_to(target)
        await trio.lowlevel.checkpoint()

    # -- the run ---------------------------------------------------------------------------------------

    async def run(self) -> ReplaySummary:
        started = time.monotonic()
        readers = self._open_all()
        ws = [r for r in readers if r.header.kind == "ws"]
        rest = [r for r in readers if r.header.kind == "rest"]
        rest_records: dict[tuple[str, str], list[Record]] = {}
        for reader in rest:
            key = (reader.header.exchange, reader.header.market)
            rest_records.setdefault(key, []).extend(self._read_all(reader))
        for records in rest_records.values():
            records.sort(key=lambda r: r.recv)
        total = self._count(ws) if self._progress else None
        merged: Iterator[tuple[str, Record]] = heapq.merge(
            *(self._tagged(reader) for reader in ws), key=lambda item: item[1].recv
        )
        head = next(merged, None)
        if head is not None:
            merged = itertools.chain([head], merged)
        first = head[1].recv if head is not None else min((r.header.started for r in ws), default=0)
        state_dir = tempfile.mkdtemp(prefix="marketflow-replay-")
        try:
            daemon = self.daemon = Daemon(self._daemon_config(ws, state_dir), replay=True)
            answerers = await self._recorded_rest(daemon, rest_records)
            self._base_us = first - LEAD_US
            clock = trio.lowlevel.current_clock()
            self._clock = clock if isinstance(clock, ReplayClock) and clock.held else None
            self._t_base = trio.current_time()
            token = replay_clock.set(self.now_us)
            try:
                with Progress(total=total, label="replay", unit="frames") as progress:
                    if not self._progress:
                        progress.enabled = False
                    counts = await self._drive(daemon, ws, merged, progress)
            finally:
                replay_clock.reset(token)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)
        last = counts.pop("last_recv")
        return self._summary(daemon, counts, readers, answerers, first, last, time.monotonic() - started)

    def _open_all(self) -> list[CaptureReader]:
        readers: list[CaptureReader] = []
        try:
            for path in self.paths:
                readers.append(CaptureReader(path))  # noqa: PERF401 - the ones opened are closed on error
        except CaptureFileError:
            for reader in readers:
                reader.close()
            raise
        # Deterministic merge order for records received in the same microsecond.
        readers.sort(key=lambda r: (r.header.started, r.header.feed, r.header.seq, r.path))
        return readers

    def _read_all(self, reader: CaptureReader) -> list[Record]:
        return list(self._records(reader))

    def _records(self, reader: CaptureReader) -> Iterator[Record]:
        try:
            yield from reader.records()
        except CaptureFileError as exc:
            self.errors.append(str(exc))
        if reader.truncated is not None:
            self.truncated.append(f"{reader.path}: {reader.truncated}")

    def _tagged(self, reader: CaptureReader) -> Iterator[tuple[str, Record]]:
        feed = reader.header.feed
        for record in self._records(reader):
            yield feed, record

    def _count(self, readers: list[CaptureReader]) -> int:
        total = 0
        for reader in readers:
            try:
                with CaptureReader(reader.path) as again:
                    total += sum(1 for _ in again.records())
            except CaptureFileError:
                pass  # reported when it is replayed
        return total

    def _daemon_config(self, ws: list[CaptureReader], state_dir: str) -> Config:
        feeds: dict[str, Any] = {}
        for reader in ws:
            spec = reader.header.config
            if spec is None:
                raise CaptureFileError(reader.path, 1, "the header names no feed configuration")
            feeds.setdefault(spec.name, spec.feed_config())
        base = self._config
        return attrs.evolve(
            base,
            feeds=tuple(feeds.values()),
            capture=attrs.evolve(base.capture, enabled=False),
            # The writer's spool must not be a live daemon's (its leftovers would be written here).
            daemon=attrs.evolve(base.daemon, state_dir=state_dir),
        )

    async def _recorded_rest(
        self, daemon: Daemon, records: dict[tuple[str, str], list[Record]]
    ) -> list[RecordedRest]:
        answerers = []
        for key, client in list(daemon.rest_clients.items()):
            await client.aclose()
            answerer = RecordedRest(records.get(key, []), self)
            answerers.append(answerer)
            transport = httpx.MockTransport(answerer.handle)
            budget = WeightBudget(client.budget.limit, client.budget.window_s)
            daemon.rest_clients[key] = RestClient(
                client.base_url, budget, httpx.AsyncClient(transport=transport)
            )
        return answerers

    async def _drive(
        self,
        daemon: Daemon,
        ws: list[CaptureReader],
        merged: Iterator[tuple[str, Record]],
        progress: Progress,
    ) -> dict[str, int]:
        sessions: dict[str, tuple[Header, Session]] = {}
        for reader in ws:
            header = reader.header
            venue = exchanges.venue(header.exchange)
            sessions.setdefault(header.feed, (header, venue.session(header.market, header.topics)))
        counts = {"frames": 0, "data_frames": 0, "events": 0, "last_recv": 0}
        batch: list[RawFrames] = []
        data: list[bytes] = []
        data_feed = ""
        current = -1
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            try:
                for feed, record in merged:
                    if record.recv != current:
                        if data:
                            batch.append(self._raw(sessions[data_feed][0], current, data))
                            data = []
                        if batch:
                            await daemon.raw_bus.publish(batch)
                            progress.advance(sum(len(raw.frames) for raw in batch))
                            batch = []
                        current = record.recv
                        await self._advance(current)
                    if record.type == "frame":
                        counts["frames"] += 1
                        header, session = sessions[feed]
                        message = record.frame_bytes()
                        marker = sequence_marker(session, message)
                        if marker is not None:
                            if data and data_feed != feed:
                                batch.append(self._raw(sessions[data_feed][0], current, data))
                                data = []
                            data_feed = feed
                            data.append(marker)
                        if not is_data_frame(session, message):
                            progress.advance(1)
                            continue
                        if data and data_feed != feed:
                            batch.append(self._raw(sessions[data_feed][0], current, data))
                            data = []
                        data_feed = feed
                        data.append(message)
                        counts["data_frames"] += 1
                    elif record.type == "event":
                        counts["events"] += 1
                        progress.advance(1)
                        self._event(daemon, feed, record)
                        if record.event == "disconnected" and feed in sessions:
                            # A new connection has its own session state (Coinbase: sequence_num from 0).
                            header = sessions[feed][0]
                            venue = exchanges.venue(header.exchange)
                            sessions[feed] = (header, venue.session(header.market, header.topics))
                if data:
                    batch.append(self._raw(sessions[data_feed][0], current, data))
                if batch:
                    await daemon.raw_bus.publish(batch)
                    progress.advance(sum(len(raw.frames) for raw in batch))
                counts["last_recv"] = max(current, 0)
                if current >= 0:
                    await self._advance(current + round(SETTLE_S * 1e6))
                await self._finish(daemon)
            finally:
                if self._clock is not None:
                    self._clock.release()
                with trio.CancelScope(shield=True):
                    await daemon.stop()
                nursery.cancel_scope.cancel()
        return counts

    async def _finish(self, daemon: Daemon) -> None:
        """Stop what depends on the data while recorded time still stands, and let the sinks save it all.

        Waiting for the candle, gap and book-snapshot sinks matters: stopping a sink cancels a write in
        flight, and the storage writer closes the store as soon as the trade bus ends.
        """
        for name in ("normalizer", "backfill", "books"):
            await daemon.supervisor.remove_child(name)
        if daemon.analytics is not None:
            await trio.testing.wait_all_tasks_blocked()  # analytics has taken every trade
            daemon.analytics.flush()
        sinks = [daemon.candle_queue] + ([] if daemon.snapshot_queue is None else [daemon.snapshot_queue])
        targets = [s.statistics().written + s.statistics().queued for s in sinks]
        ledger_target = daemon.ledger.statistics().persisted + daemon.ledger.statistics().unsaved

        def saved() -> bool:
            ledger = daemon.ledger.statistics()
            return (
                ledger.unsaved == 0
                and ledger.persisted >= ledger_target
                and all(
                    s.statistics().queued == 0 and s.statistics().written >= target
                    for s, target in zip(sinks, targets, strict=True)
                )
            )

        deadline = time.monotonic() + self._config.daemon.shutdown_timeout_s
        while not saved() and time.monotonic() < deadline:
            clock = self._clock
            if clock is not None and clock.held:
                await trio.testing.wait_all_tasks_blocked()
                clock.jump_to(trio.current_time() + SAVE_POLL_S)
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(SAVE_POLL_S)

    @staticmethod
    def _raw(header: Header, recv: int, frames: list[bytes]) -> RawFrames:
        return RawFrames(header.feed, header.exchange, header.market, recv, frames)

    @staticmethod
    def _event(daemon: Daemon, feed: str, record: Record) -> None:
        if feed not in daemon.connections:
            return
        if record.event == "disconnected":
            daemon.books.feed_disconnected(feed)
        elif record.event == "reconnected" and record.down_since is not None:
            daemon.on_reconnect(feed, record.down_since, record.recv)

    def _summary(
        self,
        daemon: Daemon,
        counts: dict[str, int],
        readers: list[CaptureReader],
        answerers: list[RecordedRest],
        first: int,
        last: int,
        elapsed: float,
    ) -> ReplaySummary:
        writer = daemon.writer.statistics() if daemon.writer is not None else None
        books = daemon.books.statistics().books
        return ReplaySummary(
            files=len(readers),
            connections=len({r.header.feed for r in readers if r.header.kind == "ws"}),
            frames=counts["frames"],
            data_frames=counts["data_frames"],
            events=counts["events"],
            rest_served=sum(a.served for a in answerers),
            rest_missing=sum(a.missing for a in answerers),
            trades=sum(d.counters.trades for d in daemon.decoders.values()),
            rows_written=0 if writer is None else writer.rows_written,
            duplicates=0 if writer is None else writer.duplicates,
            books=len(books),
            books_seeded=sum(1 for b in books.values() if b.snapshots > 0),
            book_gaps=sum(b.gaps for b in books.values()),
            gaps=daemon.ledger.statistics().records,
            recorded_s=max(0, last - first) / 1e6,
            elapsed_s=elapsed,
            storage=daemon.store.display_url,
            truncated=tuple(self.truncated),
            errors=tuple(self.errors),
        )


# ------------------------------------------------------------------------------------------- command


def parse_speed(text: str) -> float | None:
    """`fast` → None (as fast as possible, deterministic); `recorded` → 1.0; a factor > 0 → itself."""
    if text == "fast":
        return None
    if text == "recorded":
        return 1.0
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not factor > 0 or factor == float("inf"):
        raise ValueError(f"--speed must be fast, recorded or a factor > 0 (e.g. 10), got {text!r}")
    return factor


def run_replay(config: Config, paths: Sequence[str], speed: float | None) -> ReplaySummary:
    """Replay in a fresh Trio run: `speed` None = as fast as possible on an autojump clock."""
    progress = sys.stderr.isatty()
    replay = Replay(config, paths, speed=speed or 1.0, progress=progress)
    return trio.run(replay.run, clock=ReplayClock() if speed is None else None)


def run_replay_command(args: Any, config: Config) -> int:
    """`marketflow replay`: exit 0 when every file was replayed, 1 when one was corrupt, 2 on bad usage."""
    try:
        speed = parse_speed(args.speed)
    except ValueError as exc:
        print(f"marketflow replay: {exc}", file=sys.stderr)
        return 2
    if args.url is not None:
        if not args.url.startswith(("sqlite:///", "postgresql://", "postgresql+asyncpg://")):
            print(
                "marketflow replay: --url must be sqlite:///PATH or postgresql://USER@HOST/DB, "
                f"got {args.url.partition('://')[0]!r}",
                file=sys.stderr,
            )
            return 2
        config = attrs.evolve(config, storage=attrs.evolve(config.storage, url=args.url))
    try:
        summary = run_replay(config, args.files, speed)
    except CaptureFileError as exc:
        print(f"marketflow replay: {exc}", file=sys.stderr)
        return 1
    print(summary.text(), flush=True)
    for note in summary.truncated:
        print(f"marketflow replay: note: {note}", file=sys.stderr)
    for error in summary.errors:
        print(f"marketflow replay: error: {error} (the records before it were replayed)", file=sys.stderr)
    return 1 if summary.errors else 0
