"""cryptofeed on marketflow's real-mix frames, in its own venv (run by `marketflow.bench.mix`; standalone).

    <cryptofeed venv>/bin/python cryptofeed_mix.py --venue bybit --market linear --native BTCUSDT \
        --frames FRAMES.jsonl --repeat K [--snapshot SNAPSHOT.json] [--depth N]

Feeds every frame (one per line, as the exchange sends it) to the venue feed's own `message_handler` — its
JSON parse, its normalization and its L2 book (`order_book` C extension) with the book callback, with async
no-op callbacks for L2_BOOK, TRADES and TICKER — on a fresh feed object per pass, and prints one JSON line
`{"cpu_s": best, "runs": [...]}`: process CPU time of the pass, best of K. No socket is involved (the wss
transport costs both sides about the same; see the main bench). The instruments come from
`cryptofeed_driver.instruments_document` (no REST request). Not imported by marketflow (AGPL-3.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class Conn:
    """What the handlers read from a connection: its address (Bybit takes the market from it) and id."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.uuid = "bench"
        self.id = "bench"
        self.subscription: dict[str, Any] = {}


COUNTS: dict[str, int] = {}


def counter(kind: str) -> Any:
    async def count(*_: Any) -> None:
        COUNTS[kind] = COUNTS.get(kind, 0) + 1

    return count


def okx_document(native: str) -> list[dict[str, Any]]:
    parts = native.split("-")
    if native.endswith("-SWAP"):
        row = {"instType": "SWAP", "instId": native, "tickSz": "0.1", "state": "live"}
    else:
        row = {"instType": "SPOT", "instId": native, "baseCcy": parts[0], "quoteCcy": parts[1]}
        row["tickSz"] = "0.1"
    return [{"data": [row]}]


def coinbase_document(native: str) -> dict[str, Any]:
    base, quote = native.split("-")
    row = {
        "base_currency_id": base,
        "quote_currency_id": quote,
        "quote_increment": "0.01",
        "product_id": native,
    }
    return {"products": [row]}


def kraken_document(native: str) -> dict[str, Any]:
    base, quote = native.split("/")
    legacy = {"BTC": "XBT", "DOGE": "XDG"}
    return {"result": {"PAIR": {"wsname": f"{legacy.get(base, base)}/{legacy.get(quote, quote)}"}}}


def feed_class(venue: str, market: str) -> Any:
    if venue == "bybit":
        from cryptofeed.exchanges import Bybit

        return Bybit
    if venue == "okx":
        from cryptofeed.exchanges import OKX

        return OKX
    if venue == "coinbase":
        from cryptofeed.exchanges import Coinbase

        return Coinbase
    if venue == "kraken":
        from cryptofeed.exchanges import Kraken

        return Kraken
    raise SystemExit(f"cryptofeed_mix: no L2-book replay for {venue} (its book starts from a REST fetch)")


def make_feed(cls: Any, symbols: list[str], depth: int) -> Any:
    from cryptofeed.defines import L2_BOOK, TICKER, TRADES

    callbacks = {L2_BOOK: counter("book"), TRADES: counter("trade"), TICKER: counter("ticker")}
    return cls(symbols=symbols, channels=[L2_BOOK, TRADES, TICKER], callbacks=callbacks, max_depth=depth)


async def one_pass(cls: Any, symbols: list[str], depth: int, frames: list[str], conn: Conn) -> float:
    feed = make_feed(cls, symbols, depth)
    handler = feed.message_handler
    conn.subscription = {chan: list(pairs) for chan, pairs in feed.subscription.items()}
    now = time.time()
    start = time.process_time()
    for frame in frames:
        await handler(frame, conn, now)
    took = time.process_time() - start
    return took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venue", required=True)
    parser.add_argument("--market", required=True)
    parser.add_argument("--native", required=True)
    parser.add_argument("--frames", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--snapshot", default=None)
    parser.add_argument("--depth", type=int, default=0)
    args = parser.parse_args()

    from cryptofeed.symbols import Symbols

    cls = feed_class(args.venue, args.market)
    if args.venue == "bybit":
        from cryptofeed_driver import instruments_document

        document = instruments_document(args.venue, args.market, [args.native])
        address = f"wss://127.0.0.1/v5/public/{args.market}"
    elif args.venue == "coinbase":
        document = coinbase_document(args.native)
        address = "wss://127.0.0.1"
    elif args.venue == "kraken":
        document = kraken_document(args.native)
        address = "wss://127.0.0.1/v2"
    else:
        document = okx_document(args.native)
        address = "wss://127.0.0.1/ws/v5/public"
    syms, info = cls._parse_symbol_data(document)
    Symbols.set(cls.id, syms, info)
    symbols = list(syms)
    with open(args.frames) as f:
        frames = f.read().split("\n")
    conn = Conn(address)
    runs = []
    for _ in range(args.repeat):
        COUNTS.clear()
        runs.append(asyncio.run(one_pass(cls, symbols, args.depth, frames, conn)))
    from importlib.metadata import version

    result = {"cpu_s": min(runs), "runs": runs, "symbols": symbols, "callbacks": COUNTS}
    print(json.dumps(result | {"version": version("cryptofeed")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
