"""marketflow's side of `marketflow bench`: one stage of the pipeline in its own process.

    python -m marketflow.bench.worker --stage STAGE --url WS_URL [--storage-url URL] ...

Stages, each adding to the one before:

- `transport`: the WebSocket client alone (Sans-I/O on trio), counting data frames;
- `decode`: + the venue's frame decoder (exact decimals, both timestamps);
- `book` (real-mix traffic, `--mix-frames`): + the venue's exact book on every book update (sequence
  checks, checksums), in the read loop; the final line holds, per read, the wall time it was done and the
  data frames done so far (the harness turns them into send → applied latencies);
- `pipeline`: + the feed and normalizer actors and the trade bus, as in the daemon, with a consumer that
  only counts — the daemon without storage;
- `daemon`: the whole daemon (feeds, normalizer, books, analytics, trade ring, HTTP, storage writer).

The process prints JSON lines on stdout: `{"event":"ready",...}` once subscribed (the harness then lets
the blaster start), progress lines `{"t","frames","trades","cpu","rss"}` every `--report-interval`
seconds (for `daemon`, `trades` counts committed rows), and on SIGTERM a final line with the latency
samples it holds (`daemon`: exchange time → commit, per committed trade).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from marketflow.config import DaemonConfig, FeedConfig, default_config
from marketflow.exchanges import VENUES
from marketflow.exchanges.base import Decoded, FrameDecoder, Session
from marketflow.exchanges.ws import connect_ws
from marketflow.model import RawFrames, Trade
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.bus import Bus, Overflow

STAGES = ("transport", "decode", "book", "pipeline", "daemon")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


@attrs.define
class Venue:
    exchange: str
    market: str
    native: str
    symbol: str

    def session(self) -> Session:
        venue = VENUES[self.exchange]
        depth = venue.markets[self.market].default_book_depth
        return venue.session(self.market, [venue.topic(self.market, "trades", self.native, depth)])

    def decoder(self) -> FrameDecoder:
        return VENUES[self.exchange].decoder(self.market, {self.native: self.symbol})


def venue_for(exchange: str, market: str, native: str) -> Venue:
    return Venue(exchange, market, native, VENUES[exchange].normalize_symbol(market, native))


class Progress:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.frames = 0
        self.trades = 0
        self.probe: Callable[[], None] | None = None
        """Refreshes `frames`/`trades` from the stage's counters just before each report: polling them
        in a loop of their own was a wake-up every 20 ms, CPU the harness charged to the client."""

    async def report_loop(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.emit()

    def emit(self, **extra: Any) -> None:
        if self.probe is not None:
            self.probe()
        emit(
            {
                "t": time.time(),
                "frames": self.frames,
                "trades": self.trades,
                "cpu": time.process_time(),
                "rss": rss_bytes(),
                **extra,
            }
        )


async def run_transport(args: argparse.Namespace, venue: Venue, progress: Progress, decode: bool) -> None:
    context = _ssl_context(args.cafile)
    conn = await connect_ws(_ws_url(args.url, venue), ssl_context=context, coalesce_s=args.coalesce_ms / 1000)
    session = venue.session()
    for request in session.subscribe_requests():
        await conn.send_text(request.payload)
    decoder = venue.decoder()
    emit({"event": "ready", "cpu": time.process_time(), "rss": rss_bytes()})
    async with conn:
        while True:
            messages = await conn.receive_messages()
            if decode:
                data = [m for m in messages if session.is_data(m)]
                progress.frames += len(data)
                out = Decoded()
                decoder.decode(data, 0, out)
                progress.trades = progress.frames if args.count_frames else progress.trades + len(out.trades)
            else:
                progress.frames += len(messages)
                progress.trades = progress.frames


async def run_book(args: argparse.Namespace, venue: Venue, progress: Progress) -> None:
    """Transport + decoder + the exact book in one loop, over the blaster's real-mix stream."""
    from marketflow.bench import mix, mixframes

    built = mixframes.build(venue.exchange, args.mix_frames, seed=args.seed)  # the blaster's frames
    sync = VENUES[venue.exchange].synchronizer(venue.market)
    mix.seed_book(sync, built, venue.symbol)
    context = _ssl_context(args.cafile)
    conn = await connect_ws(_ws_url(args.url, venue), ssl_context=context, coalesce_s=args.coalesce_ms / 1000)
    session = venue.session()
    for request in session.subscribe_requests():
        await conn.send_text(request.payload)
    decoder = venue.decoder()
    done: list[tuple[float, int]] = []
    gaps = 0

    def final() -> dict[str, Any]:
        stats = sync.statistics()
        return {
            "done": done,
            "book": {"state": stats.state.name, "applied": stats.updates_applied, "gaps": stats.gaps + gaps},
            "coalesced_waits": conn.coalesced_waits,
        }

    progress.final = final  # type: ignore[attr-defined]
    emit({"event": "ready", "cpu": time.process_time(), "rss": rss_bytes()})
    on_update = sync.on_update
    is_data = session.is_data
    async with conn:
        while True:
            messages = await conn.receive_messages()
            data = [m for m in messages if is_data(m)]
            if not data:
                continue
            out = Decoded()
            decoder.decode(data, time.time_ns() // 1000, out)
            for update in out.books:
                if on_update(update) is not None:
                    gaps += 1
            progress.frames += len(data)
            progress.trades = progress.frames
            done.append((time.time(), progress.frames))


async def run_pipeline(args: argparse.Namespace, venue: Venue, progress: Progress) -> None:
    raw: Bus[RawFrames] = Bus("raw")
    trades_bus: Bus[Trade] = Bus("trades")
    raw_sub = raw.subscribe("normalizer", 256, Overflow.BLOCK)
    sink_sub = trades_bus.subscribe("sink", 256, Overflow.BLOCK)
    counters = FeedCounters()
    feed = Feed(
        name=f"{venue.exchange}-{venue.market}",
        exchange=venue.exchange,
        market=venue.market,
        url=_ws_url(args.url, venue),
        session_factory=venue.session,
        bus=raw,
        counters=counters,
        stale_timeout_s=60,
        ping_interval_s=20,
        ssl_context=_ssl_context(args.cafile),
        read_coalesce_s=args.coalesce_ms / 1000,
    )
    normalizer = Normalizer(raw_sub, trades_bus, {feed.name: venue.decoder()})  # keyed by feed name

    async def sink() -> None:
        with sink_sub.receiver() as receiver:
            async for batch in receiver:
                progress.trades += len(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink)
        await nursery.start(normalizer.run)
        await nursery.start(feed.run)
        while not counters.subscribed:  # noqa: ASYNC110 - polling a counter, no event exists
            await trio.sleep(0.01)

        def probe() -> None:
            progress.frames = counters.data_frames

        progress.probe = probe
        emit({"event": "ready", "cpu": time.process_time(), "rss": rss_bytes()})


async def run_daemon(args: argparse.Namespace, venue: Venue, progress: Progress) -> None:
    from marketflow.daemon import Daemon

    base = default_config(env={})
    state = Path(args.state_dir)
    feed = FeedConfig(
        venue.exchange,
        venue.market,
        (venue.symbol,),
        channels=("trades",),
        ws_url=args.url,
        rest_url=args.rest_url,
    )
    config = attrs.evolve(
        base,
        feeds=(feed,),
        storage=attrs.evolve(base.storage, url=args.storage_url),
        daemon=attrs.evolve(base.daemon, state_dir=str(state)),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
    )
    config = attrs.evolve(config, daemon=attrs.evolve(config.daemon, read_coalesce_ms=args.coalesce_ms))
    daemon = Daemon(config, ssl_context=_ssl_context(args.cafile)) if args.cafile else Daemon(config)
    commits: list[tuple[float, list[int]]] = []

    def on_commit(chunk: Sequence[Trade]) -> None:
        commits.append((time.time(), [t.ts for t in chunk]))

    counters = daemon.feed_counters[f"{venue.exchange}-{venue.market}"]

    def probe() -> None:
        writer = daemon.writer
        if writer is not None:
            if writer.on_commit is None:  # a restarted writer is a new one
                writer.on_commit = on_commit
            progress.trades = writer.statistics().rows_written
        progress.frames = counters.data_frames

    def final() -> dict[str, Any]:
        latencies = [round(at * 1e6 - ts) for at, tss in commits for ts in tss]
        chunks = [(at, round(at * 1e6 - min(tss))) for at, tss in commits if tss]
        return {"commit_latency_us": latencies, "commit_chunks": chunks}

    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        probe()  # the writer exists once the daemon has started: it gets `on_commit` before any trade
        progress.probe = probe
        while not counters.subscribed:  # noqa: ASYNC110 - polling a counter, no event exists
            await trio.sleep(0.01)
        http = daemon.http.url if daemon.http is not None else None
        emit({"event": "ready", "cpu": time.process_time(), "rss": rss_bytes(), "http": http})
        progress.final = final  # type: ignore[attr-defined]


def _ws_url(url: str, venue: Venue) -> str:
    if venue.exchange == "binance" and not url.rstrip("/").endswith(("/stream", "/ws")):
        return url.rstrip("/") + "/stream"
    return url


def _ssl_context(cafile: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=cafile) if cafile else None


async def main_async(args: argparse.Namespace) -> None:
    venue = venue_for(args.exchange, args.market, args.symbol)
    progress = Progress(args.report_interval)
    stop = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        nursery.start_soon(progress.report_loop)

        async def body() -> None:
            if args.stage in ("transport", "decode"):
                await run_transport(args, venue, progress, decode=args.stage == "decode")
            elif args.stage == "book":
                await run_book(args, venue, progress)
            elif args.stage == "pipeline":
                await run_pipeline(args, venue, progress)
            else:
                await run_daemon(args, venue, progress)

        nursery.start_soon(body)
        await stop.wait()
        nursery.cancel_scope.cancel()
    final = getattr(progress, "final", None)
    progress.emit(event="final", **(final() if final is not None else {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m marketflow.bench.worker")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--url", required=True, help="the venue's WebSocket URL")
    parser.add_argument("--rest-url", default=None)
    parser.add_argument("--exchange", choices=tuple(VENUES), default="bybit")
    parser.add_argument("--market", default="linear")
    parser.add_argument("--symbol", default="BTCUSDT", help="native symbol")
    parser.add_argument("--cafile", default=None, help="CA to trust for wss")
    parser.add_argument("--storage-url", default=None)
    parser.add_argument("--state-dir", default=".")
    parser.add_argument("--report-interval", type=float, default=0.1)
    parser.add_argument(
        "--count-frames", action="store_true", help="decode: report data frames as delivered (real mix)"
    )
    parser.add_argument(
        "--mix-frames", type=int, default=0, help="book: the blaster's real-mix frame count (same frames)"
    )
    parser.add_argument("--seed", type=int, default=1, help="book: the blaster's seed")
    parser.add_argument(
        "--coalesce-ms",
        type=float,
        default=DaemonConfig().read_coalesce_ms,
        help="read coalescing (default: the daemon's)",
    )
    args = parser.parse_args(argv)
    if args.stage == "daemon" and not args.storage_url:
        parser.error("--stage daemon needs --storage-url")
    if args.stage == "book" and args.mix_frames <= 0:
        parser.error("--stage book needs --mix-frames (the blaster's real-mix frame count)")
    profile_to = os.environ.get("MARKETFLOW_BENCH_PROFILE")
    if profile_to:  # cProfile of the whole stage, for finding where the CPU per frame goes
        import cProfile

        cProfile.runctx("trio.run(main_async, args)", globals(), {"args": args}, profile_to)
    else:
        trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
