"""The real-mix table of `marketflow bench`: per venue, CPU per frame of each stage on realistic traffic.

    python -m marketflow.bench.mix [--frames N] [--repeat K] [--no-cryptofeed] [--json PATH]

Traffic is `mixframes`: each venue's book deltas, tickers and trades in recorded proportions, and the same
venue's book deltas alone. Stages run in this process, out of the socket (the wss transport's own cost per
frame is the `transport wss` case of the main bench), each adding to the one before:

- `decode`: the venue's `FrameDecoder` on every frame, `--batch` frames per call as the normalizer gets
  them (fresh decoder per pass: no trade is a duplicate);
- `+ book`: and the venue's synchronizer on every book update (sequence checks, crossed-book check, OKX's
  CRC32 checksum over the exact strings), seeded with the REST snapshot first where the venue needs one;
- `+ actors`: the daemon's actors on trio: frames published in batches of `--batch` (what one coalesced
  read holds) on the raw bus → the `Normalizer` → the trade, book and market-data buses → the `BookKeeper`
  (the real one, with its `LiveBooks`), the `MarketDataKeeper` (tickers into the live state) and a trade
  consumer.

Every pass checks that each book stayed synced (no gap, every delta applied). Times are process CPU time
(`time.process_time`), best of K, stages interleaved round-robin so a loaded machine slows all alike.
cryptofeed (its own venv, `cryptofeed_env`) is measured on the very same frames by `cryptofeed_mix.py`:
its venue handler and its L2 book (C `order_book`) with its defaults — Kraken's CRC32 checked on every
message, Coinbase's `sequence_num` followed per connection, no OKX checksum and no Bybit sequence checked;
its Binance book starts from a REST fetch, so it is not replayed. Both sides decode the ticker frames into
normalized tickers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from marketflow.bench import mixframes
from marketflow.exchanges import VENUES
from marketflow.exchanges.base import Decoded
from marketflow.exchanges.orderbook import BookState, Synchronizer
from marketflow.model import BookUpdate, MarketData, RawFrames, Trade
from marketflow.pipeline.bookkeeper import BookKeeper, BookSpec, LiveBooks
from marketflow.pipeline.gaps import GapLedger
from marketflow.pipeline.market_actors import MarketDataKeeper
from marketflow.pipeline.market_data import Emitted, LiveMarketData
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.bus import Bus, Overflow

STAGES = ("decode", "+ book", "+ actors")
CRYPTOFEED_SCRIPT = Path(__file__).with_name("cryptofeed_mix.py")


def seed_book(sync: Synchronizer, mix: mixframes.Mix, symbol: str) -> None:
    """Seed a REST-snapshot venue's book (Binance) with the mix's snapshot; nothing for the others."""
    if mix.snapshot is None:
        return
    last_id, bids, asks = mix.snapshot
    bid_levels = [(Decimal(p), Decimal(a)) for p, a in bids]
    ask_levels = [(Decimal(p), Decimal(a)) for p, a in asks]
    snap = BookUpdate(mix.spec.venue, symbol, True, last_id, last_id, None, bid_levels, ask_levels, 0, 0)
    if sync.on_snapshot(snap) is not None or sync.state is not BookState.SYNCED:
        raise AssertionError(f"{mix.spec.venue}: the REST snapshot did not sync the book")


class Case:
    """One venue's frames (mix or book-only) and how to run each stage on them."""

    def __init__(self, mix: mixframes.Mix, label: str) -> None:
        self.mix = mix
        self.label = label
        spec = mix.spec
        self.venue = VENUES[spec.venue]
        self.market = spec.market
        self.native = spec.native
        self.symbol = self.venue.normalize_symbol(spec.market, spec.native)
        self.frames = mix.frames
        self.book_frames = mix.kinds.count("book")

    def _seed(self, sync: Synchronizer) -> None:
        seed_book(sync, self.mix, self.symbol)

    def _check(self, sync: Synchronizer, applied_before: int = 0) -> None:
        stats = sync.statistics()
        expected = self.book_frames - (0 if self.mix.snapshot is not None else 1)
        applied = stats.updates_applied - applied_before
        if stats.state is not BookState.SYNCED or stats.gaps or applied != expected:
            raise AssertionError(f"{self.label}: book not continuous ({stats})")

    def decode(self, batch: int) -> float:
        decoder = self.venue.decoder(self.market, {self.native: self.symbol})
        books = 0
        start = time.process_time()
        for chunk in _chunks(self.frames, batch):
            out = Decoded()
            decoder.decode(chunk, 0, out)
            books += len(out.books)
        took = time.process_time() - start
        if books != self.book_frames:
            raise AssertionError(f"{self.label}: {books} book updates of {self.book_frames}")
        return took

    def book(self, batch: int) -> float:
        decoder = self.venue.decoder(self.market, {self.native: self.symbol})
        sync = self.venue.synchronizer(self.market)
        self._seed(sync)
        applied = sync.statistics().updates_applied
        start = time.process_time()
        on_update = sync.on_update
        for chunk in _chunks(self.frames, batch):
            out = Decoded()
            decoder.decode(chunk, 0, out)
            for update in out.books:
                if on_update(update) is not None:
                    raise AssertionError(f"{self.label}: gap")
        took = time.process_time() - start
        self._check(sync, applied)
        return took

    def actors(self, batch: int) -> float:
        return trio.run(self._actors, batch)

    async def _actors(self, batch: int) -> float:
        feed = f"{self.venue.name}-{self.market}"
        raw: Bus[RawFrames] = Bus("raw")
        trades: Bus[Trade] = Bus("trades")
        books: Bus[BookUpdate] = Bus("books")
        raw_sub = raw.subscribe("normalizer", 256, Overflow.BLOCK)
        trade_sub = trades.subscribe("sink", 256, Overflow.BLOCK)
        book_sub = books.subscribe("books", 256, Overflow.BLOCK)
        market: Bus[MarketData] = Bus("market_data")
        market_sub = market.subscribe("market_data", 256, Overflow.BLOCK)
        live_market = LiveMarketData()
        emitted = 0

        def submit(out: Emitted) -> None:
            nonlocal emitted
            emitted += len(out.samples) + len(out.quotes) + len(out.liquidations)

        topic = self.venue.topic(self.market, "book", self.native, self.mix.spec.depth)
        spec = BookSpec(self.venue.name, self.market, self.symbol, self.native, feed, topic)
        live = LiveBooks([spec], GapLedger())
        sync = live.books[self.venue.name, self.symbol]
        self._seed(sync)
        applied = sync.statistics().updates_applied

        async def resubscribe(feed: str, topics: list[str]) -> bool:
            raise AssertionError(f"{self.label}: resubscribe {topics}")

        keeper = BookKeeper(book_sub, live, {}, resubscribe)
        normalizer = Normalizer(
            raw_sub,
            trades,
            {feed: self.venue.decoder(self.market, {self.native: self.symbol})},
            books=books,
            market_data=market,
        )
        market_keeper = MarketDataKeeper(market_sub, live_market, submit)
        got = 0

        async def sink() -> None:
            nonlocal got
            with trade_sub.receiver() as receiver:
                async for items in receiver:
                    got += len(items)

        chunks = _chunks(self.frames, batch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink)
            await nursery.start(keeper.run)
            await nursery.start(market_keeper.run)
            start = time.process_time()
            async with trio.open_nursery() as inner:
                await inner.start(normalizer.run)
                for chunk in chunks:
                    await raw.publish([RawFrames(feed, self.venue.name, self.market, 0, chunk)])
                raw.close()  # the normalizer ends once it has decoded everything
            books.close()  # and the keepers and the sink once they have taken everything
            trades.close()
            market.close()
        took = time.process_time() - start
        self._check(sync, applied)
        tickers = self.mix.kinds.count("ticker")
        if live_market.statistics().tickers != tickers:
            raise AssertionError(f"{self.label}: {live_market.statistics()} of {tickers} tickers")
        return took


def _chunks(frames: list[bytes], batch: int) -> list[list[bytes]]:
    return [frames[i : i + batch] for i in range(0, len(frames), batch)]


def measure(cases: list[Case], repeat: int, batch: int) -> dict[str, dict[str, float]]:
    """Best CPU seconds per case and stage, stages interleaved round-robin."""
    best: dict[str, dict[str, float]] = {c.label: dict.fromkeys(STAGES, float("inf")) for c in cases}
    runs: dict[str, Callable[[Case], float]] = {
        "decode": lambda c: c.decode(batch),
        "+ book": lambda c: c.book(batch),
        "+ actors": lambda c: c.actors(batch),
    }
    for _ in range(repeat):
        for case in cases:
            for stage, run in runs.items():
                best[case.label][stage] = min(best[case.label][stage], run(case))
    return best


def cryptofeed_times(cases: list[Case], repeat: int, log: Callable[[str], None]) -> dict[str, Any]:
    """cryptofeed's CPU seconds per case on the same frames (its handler + L2 book), or why it could not."""
    from marketflow.bench import cryptofeed_env

    try:
        env = cryptofeed_env.ensure_venv(progress=lambda m: log(f"  {m}"))
    except cryptofeed_env.CryptofeedEnvError as exc:
        return {"error": str(exc)}
    results: dict[str, Any] = {"version": env.version}
    with tempfile.TemporaryDirectory(prefix="marketflow-mix-") as tmp:
        for case in cases:
            path = Path(tmp) / "frames.jsonl"
            path.write_bytes(b"\n".join(case.frames))
            snap = Path(tmp) / "snapshot.json"
            snap.write_text(json.dumps(case.mix.snapshot))
            cmd = [str(env.python), str(CRYPTOFEED_SCRIPT), "--venue", case.venue.name, "--market"]
            cmd += [case.market, "--native", case.native, "--frames", str(path), "--repeat", str(repeat)]
            cmd += ["--snapshot", str(snap), "--depth", str(case.mix.spec.depth)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=_cf_env(tmp), check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                results[case.label] = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
            else:
                results[case.label] = json.loads(lines[-1])
    return results


def _cf_env(tmp: str) -> dict[str, str]:
    import os

    return {**os.environ, "XDG_CACHE_HOME": tmp, "PYTHONHASHSEED": "0"}


def run(frames: int, repeat: int, batch: int, cryptofeed: bool, log: Callable[[str], None]) -> dict[str, Any]:
    cases: list[Case] = []
    for venue in mixframes.SPECS:
        if venue not in VENUES:
            continue
        cases.append(Case(mixframes.build(venue, frames), f"{venue} mix"))
        cases.append(Case(mixframes.build(venue, frames, book_only=True), f"{venue} books"))
        if venue == "okx":  # live OKX sends checksum 0 since 2026-06: only the seqId chain is checked
            built = mixframes.build(venue, frames, book_only=True, checksums=False)
            cases.append(Case(built, "okx books, cs 0"))
    log(f"real mix: {len(cases)} cases of {frames} frames, best of {repeat}")
    best = measure(cases, repeat, batch)
    cf = cryptofeed_times(cases, repeat, log) if cryptofeed else {}
    rows = []
    for case in cases:
        n = len(case.frames)
        times = best[case.label]
        row: dict[str, Any] = {
            "case": case.label,
            "venue": case.venue.name,
            "market": case.market,
            "frames": n,
            "book_frames": case.book_frames,
            "tickers": case.mix.kinds.count("ticker"),
            "trades": case.mix.kinds.count("trade"),
            "bytes_per_frame": round(sum(map(len, case.frames)) / n, 1),
            "levels_per_book_frame": _levels(case),
        }
        for stage in STAGES:
            row[f"{stage}_us"] = round(times[stage] / n * 1e6, 3)
        row["frames_per_s_per_core"] = round(n / times["+ actors"])
        row["book_updates_per_s_per_core"] = round(case.book_frames / times["+ book"])
        theirs = cf.get(case.label, {})
        if "cpu_s" in theirs:
            row["cryptofeed_us"] = round(theirs["cpu_s"] / n * 1e6, 3)
            row["vs_cryptofeed"] = round(theirs["cpu_s"] / times["+ book"], 2)
        elif "error" in theirs:
            row["cryptofeed_error"] = theirs["error"]
        rows.append(row)
    return {"frames": frames, "repeat": repeat, "batch": batch, "cryptofeed": cf, "rows": rows}


def _levels(case: Case) -> float:
    decoder = case.venue.decoder(case.market, {case.native: case.symbol})
    out = Decoded()
    decoder.decode(case.frames, 0, out)
    deltas = [u for u in out.books if not u.snapshot]
    return round(sum(len(u.bids) + len(u.asks) for u in deltas) / max(1, len(deltas)), 1)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"real traffic mix, in process ({result['frames']:,} frames per case, best of {result['repeat']}, "
        f"CPU µs per frame; actors get batches of {result['batch']} frames)",
        f"{'case':<16}{'book:tick:trade':>17}{'lv/delta':>9}{'decode':>8}{'+book':>8}{'+actors':>9}"
        f"{'frames/s/core':>15}{'books/s/core':>14}{'cryptofeed':>12}{'ratio':>7}",
    ]
    for r in result["rows"]:
        mixed = f"{r['book_frames']}:{r['tickers']}:{r['trades']}"
        cf = f"{r['cryptofeed_us']:.2f}" if "cryptofeed_us" in r else "n/a"
        ratio = f"x{r['vs_cryptofeed']:.1f}" if "vs_cryptofeed" in r else ""
        lines.append(
            f"{r['case']:<16}{mixed:>17}{r['levels_per_book_frame']:>9.1f}{r['decode_us']:>8.2f}"
            f"{r['+ book_us']:>8.2f}{r['+ actors_us']:>9.2f}{r['frames_per_s_per_core']:>15,}"
            f"{r['book_updates_per_s_per_core']:>14,}{cf:>12}{ratio:>7}"
        )
    lines.append(
        "decode: venue decoder; +book: and the exact book (sequence checks, crossed check, checksums); "
        "+actors: and raw bus -> normalizer -> buses -> book and market-data keepers. ratio: "
        "cryptofeed CPU (its handler + L2 book, same frames) / ours (+book). Ticker frames are decoded "
        "into normalized tickers on both sides. Book checks: Bybit u+1, Binance pu chain, OKX seqId "
        "chain + CRC32 top 25, Coinbase sequence_num, Kraken CRC32 top 10 (cryptofeed checks Kraken's "
        "too)."
    )
    for key, value in result.get("cryptofeed", {}).items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"cryptofeed {key}: {value['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketflow.bench.mix", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--frames", type=int, default=20_000, help="frames per case")
    parser.add_argument("--repeat", type=int, default=5, help="passes per stage, best of K")
    parser.add_argument("--batch", type=int, default=64, help="frames per raw-bus batch (actors stage)")
    parser.add_argument("--no-cryptofeed", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run(args.frames, args.repeat, args.batch, not args.no_cryptofeed, log)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
