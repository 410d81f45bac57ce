"""Ticker messages on NATS: every tick packed per flush, or the merged state coalesced per interval.

    python -m benchmarks.nats_market [--symbols S] [--rate R] [--seconds T]

A synthetic book-ticker feed (every record a new best bid/ask, as Binance `bookTicker` sends on busy
markets) of S symbols at R records/s each, for T seconds of exchange time, is cut three ways:

- every tick: per symbol per `flush_interval_s` (0.05 s), one message holding every record (like trades);
- coalesced: per symbol per `book_interval_s` (0.25 s), the merged state only (what a reader of the live
  ticker needs; `store_quotes = false`);
- coalesced + quotes: the same, with the quote rows of the interval (`store_quotes = true`).

Printed per way: messages/s and KB/s on the wire, and the wall time one nats-server (started here, file
storage) took to store and ack all of it through `NatsLink.publish_acked`, as a multiple of real time.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import trio

from marketflow.config import NatsConfig
from marketflow.model import Ticker
from marketflow.nats.link import NatsLink
from marketflow.nats.market_schema import TickerState, pack_ticker
from marketflow.nats.schema import subject
from marketflow.nats.server import single
from marketflow.pipeline.market_data import Quote

Message = tuple[str, bytes, str]


class EveryTick(msgspec.Struct):
    v: int
    exchange: str
    symbol: str
    ticks: list[TickerState]


def feed(symbols: int, rate: int, seconds: int) -> list[Ticker]:
    rng = random.Random(1)
    step_us = 1_000_000 // rate
    out = []
    for n in range(rate * seconds):
        for s in range(symbols):
            bid = 65_000_00 + rng.randint(-50, 50)
            out.append(
                Ticker(
                    "binance",
                    f"S{s}-USDT",
                    n * step_us,
                    n * step_us + 900,
                    Decimal(bid).scaleb(-2),
                    Decimal(rng.randint(1, 5_000)).scaleb(-3),
                    Decimal(bid + 1).scaleb(-2),
                    Decimal(rng.randint(1, 5_000)).scaleb(-3),
                    None,
                    None,
                    True,
                )
            )
    return out


def cut(ticks: list[Ticker], interval_us: int) -> dict[tuple[int, str], list[Ticker]]:
    windows: dict[tuple[int, str], list[Ticker]] = {}
    for t in ticks:
        windows.setdefault((t.ts // interval_us, t.symbol), []).append(t)
    return windows


def every_tick(ticks: list[Ticker]) -> list[Message]:
    encoder = msgspec.json.Encoder(decimal_format="string")
    out = []
    for (window, symbol), part in cut(ticks, 50_000).items():
        rows = [
            TickerState(t.ts, t.recv_ts, t.bid, t.bid_size, t.ask, t.ask_size, t.last, t.volume_24h)
            for t in part
        ]
        payload = encoder.encode(EveryTick(1, "binance", symbol, rows))
        out.append((subject("bench", "ticker", "binance", symbol), payload, f"e{window}.{symbol}"))
    return out


def coalesced(ticks: list[Ticker], quotes: bool) -> list[Message]:
    out = []
    for (_, symbol), part in cut(ticks, 250_000).items():
        rows = (
            [Quote(t.exchange, t.symbol, t.ts, t.bid, t.bid_size, t.ask, t.ask_size) for t in part]
            if quotes
            else []
        )
        payload, msg_id = pack_ticker(part[-1], rows)
        out.append((subject("bench", "ticker", "binance", symbol), payload, msg_id))
    return out


async def publish_s(messages: list[Message], url: str) -> float:
    link = NatsLink(NatsConfig(servers=(url,), subject_prefix="bench"), "bench")
    await link.open()
    try:
        started = time.perf_counter()
        for start in range(0, len(messages), 500):
            await link.publish_acked(messages[start : start + 500])
        return time.perf_counter() - started
    finally:
        await link.close()


async def run(symbols: int, rate: int, seconds: int) -> None:
    ticks = feed(symbols, rate, seconds)
    print(f"{symbols} symbols x {rate} ticker records/s, {seconds} s: {len(ticks)} records")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (
            ("every tick (0.05 s)", every_tick),
            ("coalesced (0.25 s)", lambda t: coalesced(t, False)),
            ("coalesced + quotes (0.25 s)", lambda t: coalesced(t, True)),
        ):
            server = single(Path(tmp) / name.replace(" ", "_"))
            server.start()
            try:
                await server.wait_ready()
                started = time.process_time()
                messages = build(ticks)
                encode_us = (time.process_time() - started) / len(ticks) * 1e6
                wall = await publish_s(messages, server.url)
            finally:
                server.stop()
            size = sum(len(m[1]) for m in messages)
            print(
                f"  {name:28} {len(messages) / seconds:8.0f} msgs/s {size / seconds / 1024:8.1f} KB/s "
                f"encode {encode_us:5.2f} us/record  stored+acked in {wall:5.2f} s "
                f"({seconds / wall:5.1f}x real time)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args(argv)
    trio.run(run, args.symbols, args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
