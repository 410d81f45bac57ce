"""Decode cost per venue: µs per frame of every venue's `FrameDecoder`, side by side, and of its book rule.

    python -m benchmarks.decode [--frames N] [--repeat K] [--json PATH]

For each venue in `VENUES` (its first market the simulator speaks) the frames are collected once from the
in-process simulator over a real socket, through the venue contract only (connections, session, is_data);
then decoding is timed alone, out of the event loop: a fresh decoder per pass (so no trade is a
duplicate), best of K passes, process CPU time. Books: the decode of the venue's default book channel, and
"+ book rule" = decode and the venue's synchronizer on every message, for venues whose books start from a
WebSocket snapshot (a REST-seeded book needs a snapshot from elsewhere: left out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

from marketflow.exchanges import VENUES
from marketflow.exchanges.base import BookRecovery, Channel, Decoded, Venue
from marketflow.exchanges.ws import connect_ws
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.server import MARKETS as SIM_MARKETS


async def collect(
    sim: SimServer, v: Venue, market: str, native: str, channel: Channel, count: int
) -> list[bytes]:
    """`count` data frames of one channel of one symbol, as the simulator sends them."""
    ws_url, _ = sim.urls(v.name, market)
    depth = v.markets[market].default_book_depth
    (plan,) = v.connections(market, [native], [channel], depth, ws_url)
    session = v.session(market, plan.topics)
    conn = await connect_ws(plan.url)
    frames: list[bytes] = []
    async with conn:
        for request in session.subscribe_requests():
            await conn.send_text(request.payload)
        while len(frames) < count:
            frames += [m for m in await conn.receive_messages() if session.is_data(m)]
    return frames[:count]


def time_pass(
    v: Venue, market: str, symbols: dict[str, str], frames: list[bytes], books: bool
) -> tuple[float, int]:
    """CPU seconds of one decode pass (with the book rule when `books`) and the records it made."""
    decoder = v.decoder(market, symbols)
    syncs = {s: v.synchronizer(market) for s in symbols.values()}
    out = Decoded()
    start = time.process_time()
    decoder.decode(frames, 0, out)
    if books:
        for update in out.books:
            if syncs[update.symbol].on_update(update) is not None:
                raise AssertionError(f"{v.name}: gap on a continuous stream")
    return time.process_time() - start, len(out.trades) + len(out.books)


def best(
    v: Venue, market: str, symbols: dict[str, str], frames: list[bytes], books: bool, repeat: int
) -> tuple[float, int]:
    runs = [time_pass(v, market, symbols, frames, books) for _ in range(repeat)]
    return min(r[0] for r in runs) / len(frames) * 1e6, runs[0][1]


async def gather(count: int) -> dict[tuple[str, str], tuple[str, str, list[bytes], list[bytes]]]:
    """Per (venue, market): (native, symbol, trade frames, book frames)."""
    got = {}
    sim = SimServer(SimConfig(seed=1, rate=0.0, book_rate=0.0, record_delivered=False))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        for name, v in VENUES.items():
            market = next((m for m in v.markets if m in SIM_MARKETS.get(name, ())), None)
            if market is None:
                continue
            native = sim.listed(name, market)[0]
            symbol = v.normalize_symbol(market, native)
            native = v.native_symbol(market, symbol)
            trades = await collect(sim, v, market, native, "trades", count)
            books = await collect(sim, v, market, native, "book", count)
            got[name, market] = (native, symbol, trades, books)
        nursery.cancel_scope.cancel()
    return got


def run(count: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for (name, market), (native, symbol, trades, books) in trio.run(gather, count).items():
        v = VENUES[name]
        symbols = {native: symbol}
        trade_us, trade_records = best(v, market, symbols, trades, False, repeat)
        book_us, _ = best(v, market, symbols, books, False, repeat)
        rule_us = None
        if v.book_recovery(market) is BookRecovery.RESUBSCRIBE:
            rule_us, _ = best(v, market, symbols, books, True, repeat)
        rows.append(
            {
                "venue": name,
                "market": market,
                "symbol": symbol,
                "trade_frames": len(trades),
                "trades_per_frame": trade_records / len(trades),
                "trade_decode_us_per_frame": trade_us,
                "book_frames": len(books),
                "book_bytes_per_frame": sum(map(len, books)) / len(books),
                "book_decode_us_per_frame": book_us,
                "book_rule_us_per_frame": rule_us,
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'venue market':<16}{'trades/frame':>13}{'µs/trade frame':>16}{'book B/frame':>14}"
        f"{'µs/book frame':>15}{'+ book rule':>13}"
    )
    for r in rows:
        rule = r["book_rule_us_per_frame"]
        print(
            f"{r['venue'] + ' ' + r['market']:<16}{r['trades_per_frame']:>13.2f}"
            f"{r['trade_decode_us_per_frame']:>16.2f}{r['book_bytes_per_frame']:>14,.0f}"
            f"{r['book_decode_us_per_frame']:>15.2f}{'n/a' if rule is None else f'{rule:.2f}':>13}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=5_000, help="frames per venue and channel")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes, best of K")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    rows = run(args.frames, args.repeat)
    print(f"decode per venue: {args.frames} frames per venue and channel, best of {args.repeat}, CPU time")
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
