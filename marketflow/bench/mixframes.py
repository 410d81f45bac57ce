"""Real-mix traffic for `marketflow bench`: each venue's book, ticker and trade frames in real proportions.

A recording of Bybit (4 linear + 2 spot symbols) held 2,148 orderbook : 839 tickers : 120 publicTrade
frames; Binance USD-M 764 depth : 613 bookTicker : 91 aggTrade (issue 20). OKX, Coinbase and Kraken have no
recording here: their mixes take Bybit's proportions (books : tickers : trades). Frames are built in the
venues' real shapes (PROTOCOLS.md) from one simulated book per venue:

- book deltas touch 5–30 levels (both sides), most near the touch, 60% amount changes, deletes paired with
  inserts so depth stays at the subscribed depth (Bybit `orderbook.50`, Binance `depth@100ms` over a
  1000-level REST snapshot, OKX `books` 400 levels with `seqId`/`prevSeqId` and the CRC32 checksum of the
  exact strings);
- Coinbase Advanced Trade on one connection: `l2_data` (a 1000-level snapshot, then updates of 5–30 levels
  with their `event_time`, asks as `offer`), `ticker`, `market_trades` (`side` the maker's), `sequence_num`
  0, 1, 2... across all of them; Kraken v2: the `instrument` snapshot first (the precisions its checksum
  needs), then `book` at depth 100 (updates of 1–6 levels, as Kraken sends per change) with the CRC32 of the
  top 10 on every message, `ticker` and `trade`, numbers as JSON numbers at the pair's precisions;
- bids below and asks above a fixed mid, so the book never crosses; ids continue exactly (Bybit `u + 1`,
  Binance `pu` = previous `u`, OKX `prevSeqId` = previous `seqId`, Coinbase `sequence_num`) and checksums
  are right (OKX, Kraken), so a synchronizer applies every one;
- tickers in each venue's shape (Bybit `tickers` deltas, Binance `bookTicker`, OKX `tickers`), one trade
  per trade frame with unique, contiguous ids.

`build(venue, frames)` returns a `Mix`: the data frames in send order and the snapshot that seeds a
REST-snapshot venue's book (Binance). Deterministic for a seed.
"""

from __future__ import annotations

import heapq
import random
import time
import zlib
from bisect import insort
from collections.abc import Callable

import attrs
import msgspec

MID_TICKS = 650_000
"""65000.0 at a 0.1 tick."""


@attrs.frozen
class MixSpec:
    venue: str
    market: str
    native: str
    depth: int
    """Book depth per side kept by the stream."""
    books: int
    tickers: int
    trades: int
    """Recorded proportions (frames)."""
    source: str
    levels: tuple[int, int] = (5, 30)
    """Levels per book delta (both sides), drawn uniformly."""


SPECS: dict[str, MixSpec] = {
    "bybit": MixSpec("bybit", "linear", "BTCUSDT", 50, 2148, 839, 120, "recorded (issue 20)"),
    "binance": MixSpec("binance", "usdm", "BTCUSDT", 1000, 764, 613, 91, "recorded (issue 20)"),
    "okx": MixSpec("okx", "swap", "BTC-USDT-SWAP", 400, 2148, 839, 120, "Bybit's proportions"),
    "coinbase": MixSpec("coinbase", "spot", "BTC-USD", 1000, 2148, 839, 120, "Bybit's proportions"),
    "kraken": MixSpec("kraken", "spot", "BTC/USD", 100, 2148, 839, 120, "Bybit's proportions", (1, 6)),
}


@attrs.frozen
class Mix:
    spec: MixSpec
    frames: list[bytes]
    kinds: list[str]
    """Per frame: "book", "ticker" or "trade"."""
    snapshot: tuple[int, list[list[str]], list[list[str]]] | None
    """(lastUpdateId, bids, asks) as strings, for venues seeded over REST; None when the stream starts
    with its own snapshot frame."""

    def only(self, kind: str) -> list[bytes]:
        return [f for f, k in zip(self.frames, self.kinds, strict=True) if k == kind]


class _Book:
    """A simulated book: per side tick → amount string, deltas that keep depth and never cross."""

    def __init__(self, rng: random.Random, depth: int, price: Callable[[int], str], size: Callable[[], str]):
        self.rng = rng
        self.depth = depth
        self.price = price
        self.size = size
        # Bids at MID - t, asks at MID + t, t >= 1; levels spread over 1.3 x depth ticks.
        self.sides: list[dict[int, str]] = []
        for _ in range(2):
            ticks = rng.sample(range(1, int(depth * 1.3) + 1), depth)
            self.sides.append({t: size() for t in ticks})

    def levels(self, side: int, n: int | None = None) -> list[list[str]]:
        """Best first (bids descending, asks ascending); the best `n` when given."""
        sign = -1 if side == 0 else 1
        book = self.sides[side]
        ticks = sorted(book) if n is None else heapq.nsmallest(n, book)
        return [[self.price(MID_TICKS + sign * t), book[t]] for t in ticks]

    def delta(self, levels: int) -> tuple[list[list[str]], list[list[str]]]:
        rng = self.rng
        out: list[list[list[str]]] = [[], []]
        first = rng.randint(0, levels)  # levels split between the sides at random
        for side, count in ((0, first), (1, levels - first)):
            book = self.sides[side]
            sign = -1 if side == 0 else 1
            changes: dict[int, str] = {}
            ordered = sorted(book) if count else []
            for _ in range(count):
                r = rng.random()
                pos = min(int(rng.expovariate(1 / 8)), len(ordered) - 1)
                if r < 0.6:
                    t, amount = ordered[pos], self.size()
                elif len(book) >= self.depth:
                    t, amount = ordered[pos], "0"
                else:
                    t = 1 + int(rng.expovariate(1 / 8))
                    while t in book:
                        t += 1
                    amount = self.size()
                if amount == "0":
                    if book.pop(t, None) is not None:
                        ordered.remove(t)
                else:
                    if t not in book:
                        insort(ordered, t)
                    book[t] = amount
                changes[t] = amount
            out[side] = [[self.price(MID_TICKS + sign * t), a] for t, a in changes.items()]
        return out[0], out[1]


def _okx_checksum(book: _Book) -> int:
    bids = [b[0] + ":" + b[1] for b in book.levels(0, 25)]
    asks = [a[0] + ":" + a[1] for a in book.levels(1, 25)]
    n = min(len(bids), len(asks))
    parts: list[str] = []
    for i in range(n):
        parts += (bids[i], asks[i])
    parts += bids[n:] or asks[n:]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 0x1_0000_0000 if crc >= 0x8000_0000 else crc


def _schedule(spec: MixSpec, frames: int, rng: random.Random) -> list[str]:
    total = spec.books + spec.tickers + spec.trades
    weights = (spec.books / total, spec.tickers / total, spec.trades / total)
    return rng.choices(("book", "ticker", "trade"), weights, k=frames)


def build(venue: str, frames: int, *, seed: int = 1, book_only: bool = False, checksums: bool = True) -> Mix:
    """`frames` data frames of `venue`'s mix (or book deltas only), starting at T0 ms and 2 ms apart.
    `checksums=False`: OKX books carry checksum 0, as live OKX sends since 2026-06 (nothing to verify)."""
    spec = SPECS[venue]
    rng = random.Random(seed)
    kinds = ["book"] * frames if book_only else _schedule(spec, frames, rng)
    if venue == "okx":
        return _okx(spec, kinds, rng, checksums)
    return _BUILDERS[venue](spec, kinds, rng)


T0 = 1_765_000_000_000


def _levels_per_delta(rng: random.Random, spec: MixSpec | None = None) -> int:
    low, high = (5, 30) if spec is None else spec.levels
    return rng.randint(low, high)


def _bybit(spec: MixSpec, kinds: list[str], rng: random.Random) -> Mix:
    def price(t: int) -> str:
        return f"{t // 10}.{t % 10}0"

    def size() -> str:
        return f"{rng.randint(1, 40_000) / 1000:.3f}"

    book = _Book(rng, spec.depth, price, size)
    sym = spec.native
    out: list[bytes] = []
    u = 1_000_000
    seq = 70_000_000_000
    trade_seq = 0
    enc = msgspec.json.encode
    # The stream starts with its snapshot (as Bybit sends on subscribe).
    snap = {"s": sym, "b": book.levels(0), "a": book.levels(1), "u": u, "seq": seq}
    out.append(enc({"topic": f"orderbook.{spec.depth}.{sym}", "type": "snapshot", "ts": T0, "data": snap}))
    for n, kind in enumerate(kinds[1:], start=1):
        ts = T0 + 2 * n
        if kind == "book":
            u += 1
            seq += rng.randint(1, 50)
            bids, asks = book.delta(_levels_per_delta(rng))
            data = {"s": sym, "b": bids, "a": asks, "u": u, "seq": seq}
            frame = {"topic": f"orderbook.{spec.depth}.{sym}", "type": "delta", "ts": ts, "data": data}
            out.append(enc(frame | {"cts": ts - 2}))
        elif kind == "ticker":
            bid = book.levels(0, 1)[0]
            ask = book.levels(1, 1)[0]
            data = {
                "symbol": sym,
                "tickDirection": rng.choice(("PlusTick", "ZeroPlusTick", "MinusTick")),
                "price24hPcnt": "0.017103",
                "lastPrice": ask[0],
                "turnover24h": f"{rng.randint(10**9, 10**10)}.{rng.randint(0, 9999):04d}",
                "volume24h": f"{rng.randint(10**5, 10**6)}.{rng.randint(0, 999):03d}",
                "bid1Price": bid[0],
                "bid1Size": bid[1],
                "ask1Price": ask[0],
                "ask1Size": ask[1],
            }
            frame = {"topic": f"tickers.{sym}", "type": "delta", "data": data}
            out.append(enc(frame | {"cs": seq, "ts": ts}))
        else:
            trade_seq += 1
            buy = rng.random() < 0.5
            level = book.levels(1 if buy else 0, 1)[0]
            trade = {
                "T": ts,
                "s": sym,
                "S": "Buy" if buy else "Sell",
                "v": size(),
                "p": level[0],
                "L": "PlusTick",
                "i": f"{trade_seq:08x}-5b31-4112-a178-eb6023af0000",
                "BT": False,
                "RPI": False,
                "seq": seq,
            }
            out.append(enc({"topic": f"publicTrade.{sym}", "type": "snapshot", "ts": ts, "data": [trade]}))
    return Mix(spec, out, ["book", *kinds[1:]], None)


def _binance(spec: MixSpec, kinds: list[str], rng: random.Random) -> Mix:
    def price(t: int) -> str:
        return f"{t // 10}.{t % 10}0"

    def size() -> str:
        return f"{rng.randint(1, 40_000) / 1000:.3f}"

    book = _Book(rng, spec.depth, price, size)
    sym = spec.native
    low = sym.lower()
    u = 5_000_000_000
    snapshot = (u, book.levels(0), book.levels(1))
    out: list[bytes] = []
    agg = 2_000_000_000
    first_trade = 6_000_000_000
    enc = msgspec.json.encode
    for n, kind in enumerate(kinds):
        ts = T0 + 2 * n
        if kind == "book":
            pu = u
            first = u + 1 if n else u  # the first event spans the snapshot's lastUpdateId
            u += rng.randint(1, 40)
            bids, asks = book.delta(_levels_per_delta(rng))
            data = {"e": "depthUpdate", "E": ts, "T": ts - 1, "s": sym, "U": first, "u": u, "pu": pu}
            data |= {"b": bids, "a": asks}
            out.append(enc({"stream": f"{low}@depth@100ms", "data": data}))
        elif kind == "ticker":
            bid = book.levels(0, 1)[0]
            ask = book.levels(1, 1)[0]
            data = {"e": "bookTicker", "u": u, "s": sym, "b": bid[0], "B": bid[1], "a": ask[0], "A": ask[1]}
            out.append(enc({"stream": f"{low}@bookTicker", "data": data | {"T": ts - 1, "E": ts}}))
        else:
            agg += 1
            first_trade += 1
            buy = rng.random() < 0.5
            data = {
                "e": "aggTrade",
                "E": ts,
                "s": sym,
                "a": agg,
                "p": book.levels(1 if buy else 0, 1)[0][0],
                "q": size(),
                "f": first_trade,
                "l": first_trade,
                "T": ts - 1,
                "m": not buy,
            }
            out.append(enc({"stream": f"{low}@aggTrade", "data": data}))
    return Mix(spec, out, kinds, snapshot)


def _okx(spec: MixSpec, kinds: list[str], rng: random.Random, checksums: bool = True) -> Mix:
    def price(t: int) -> str:
        return f"{t // 10}.{t % 10}"

    def size() -> str:
        return str(rng.randint(1, 3000))

    book = _Book(rng, spec.depth, price, size)
    inst = spec.native
    out: list[bytes] = []
    seq = 10_000_000
    trade_id = 500_000_000
    enc = msgspec.json.encode

    def okx_levels(levels: list[list[str]]) -> list[list[str]]:
        return [[p, a, "0", str(rng.randint(1, 9)) if a != "0" else "0"] for p, a in levels]

    arg = {"channel": "books", "instId": inst}
    data = {
        "asks": okx_levels(book.levels(1)),
        "bids": okx_levels(book.levels(0)),
        "ts": str(T0),
        "checksum": _okx_checksum(book) if checksums else 0,
        "prevSeqId": -1,
        "seqId": seq,
    }
    out.append(enc({"arg": arg, "action": "snapshot", "data": [data]}))
    for n, kind in enumerate(kinds[1:], start=1):
        ts = str(T0 + 2 * n)
        if kind == "book":
            prev = seq
            seq += rng.randint(1, 30)
            bids, asks = book.delta(_levels_per_delta(rng))
            data = {
                "asks": okx_levels(asks),
                "bids": okx_levels(bids),
                "ts": ts,
                "checksum": _okx_checksum(book) if checksums else 0,
                "prevSeqId": prev,
                "seqId": seq,
            }
            out.append(enc({"arg": arg, "action": "update", "data": [data]}))
        elif kind == "ticker":
            bid = book.levels(0, 1)[0]
            ask = book.levels(1, 1)[0]
            tick = {
                "instType": "SWAP",
                "instId": inst,
                "last": ask[0],
                "lastSz": "1",
                "askPx": ask[0],
                "askSz": ask[1],
                "bidPx": bid[0],
                "bidSz": bid[1],
                "open24h": "64000.1",
                "high24h": "66000.0",
                "low24h": "63000.5",
                "volCcy24h": "123456.78",
                "vol24h": "12345678",
                "sodUtc0": "64500.2",
                "sodUtc8": "64800.3",
                "ts": ts,
            }
            out.append(enc({"arg": {"channel": "tickers", "instId": inst}, "data": [tick]}))
        else:
            trade_id += 1
            buy = rng.random() < 0.5
            trade = {
                "instId": inst,
                "tradeId": str(trade_id),
                "px": book.levels(1 if buy else 0, 1)[0][0],
                "sz": size(),
                "side": "buy" if buy else "sell",
                "ts": ts,
                "count": "1",
            }
            out.append(enc({"arg": {"channel": "trades", "instId": inst}, "data": [trade]}))
    return Mix(spec, out, ["book", *kinds[1:]], None)


def _rfc3339(ms: int, digits: int) -> str:
    """`2025-12-06T05:46:40.002000Z` (`digits` of fraction: Kraken writes 6, Coinbase 9 in envelopes)."""
    seconds, millis = divmod(ms, 1000)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{head}.{str(millis).zfill(3).ljust(digits, '0')}Z"


def _coinbase(spec: MixSpec, kinds: list[str], rng: random.Random) -> Mix:
    """Advanced Trade on one connection: `l2_data` (whole-book snapshot first, then updates with each
    level's `event_time`; asks are `offer`), `ticker` and `market_trades`; `sequence_num` runs 0, 1, 2...
    across all of them, as Coinbase numbers a connection's messages."""

    def price(t: int) -> str:
        return f"{t // 10}.{t % 10}0"

    def size() -> str:
        n = rng.randint(1, 400_000_000)
        return f"{n // 10**8}.{n % 10**8:08d}"

    book = _Book(rng, spec.depth, price, size)
    product = spec.native
    out: list[bytes] = []
    trade_id = 900_000_000
    enc = msgspec.json.encode

    def envelope(channel: str, ts: int, seq: int, events: list[dict[str, object]]) -> bytes:
        stamp = _rfc3339(ts, 9)
        return enc(
            {"channel": channel, "client_id": "", "timestamp": stamp, "sequence_num": seq, "events": events}
        )

    def updates(bids: list[list[str]], asks: list[list[str]], when: str) -> list[dict[str, str]]:
        rows = [{"side": "bid", "event_time": when, "price_level": p, "new_quantity": a} for p, a in bids]
        return rows + [
            {"side": "offer", "event_time": when, "price_level": p, "new_quantity": a} for p, a in asks
        ]

    epoch = "1970-01-01T00:00:00Z"  # snapshot levels carry no time (PROTOCOLS.md §9.4)
    snap: dict[str, object] = {
        "type": "snapshot",
        "product_id": product,
        "updates": updates(book.levels(0), book.levels(1), epoch),
    }
    out.append(envelope("l2_data", T0, 0, [snap]))
    for n, kind in enumerate(kinds[1:], start=1):
        ts = T0 + 2 * n
        if kind == "book":
            bids, asks = book.delta(_levels_per_delta(rng, spec))
            event: dict[str, object] = {
                "type": "update",
                "product_id": product,
                "updates": updates(bids, asks, _rfc3339(ts - 1, 6)),
            }
            out.append(envelope("l2_data", ts, n, [event]))
        elif kind == "ticker":
            bid = book.levels(0, 1)[0]
            ask = book.levels(1, 1)[0]
            tick = {
                "type": "ticker",
                "product_id": product,
                "price": ask[0],
                "volume_24_h": f"{rng.randint(1000, 9999)}.{rng.randint(0, 10**8 - 1):08d}",
                "low_24_h": "63000.01",
                "high_24_h": "66000.99",
                "low_52_w": "15460",
                "high_52_w": "126296",
                "price_percent_chg_24_h": "0.09772441285005",
                "best_bid": bid[0],
                "best_bid_quantity": bid[1],
                "best_ask": ask[0],
                "best_ask_quantity": ask[1],
            }
            out.append(envelope("ticker", ts, n, [{"type": "update", "tickers": [tick]}]))
        else:
            trade_id += 1
            maker_buy = rng.random() < 0.5  # `side` is the maker's (§9.8): a BUY print hit the bid
            trade = {
                "trade_id": str(trade_id),
                "product_id": product,
                "price": book.levels(0 if maker_buy else 1, 1)[0][0],
                "size": size(),
                "side": "BUY" if maker_buy else "SELL",
                "time": _rfc3339(ts - 1, 6),
            }
            out.append(envelope("market_trades", ts, n, [{"type": "update", "trades": [trade]}]))
    return Mix(spec, out, ["book", *kinds[1:]], None)


KRAKEN_PRICE_PRECISION = 1
KRAKEN_QTY_PRECISION = 8


def _kraken(spec: MixSpec, kinds: list[str], rng: random.Random) -> Mix:
    """Kraken v2: the `instrument` snapshot (the precisions the checksum needs), then `book` (snapshot of
    `depth` levels, then updates), `ticker` and `trade`; numbers are JSON numbers written at the pair's
    precisions, and every book message carries the CRC32 of the top 10 (PROTOCOLS.md §10.4)."""

    def price(t: int) -> str:
        return f"{t // 10}.{t % 10}"

    def size() -> str:
        n = rng.randint(1, 400_000_000)
        return f"{n // 10**8}.{n % 10**8:08d}"

    book = _Book(rng, spec.depth, price, size)
    pair = spec.native
    out: list[bytes] = []
    trade_id = 80_000_000

    def text(value: str) -> str:  # the checksum text: `.` removed, leading zeros stripped
        return value.replace(".", "").lstrip("0") or "0"

    def crc() -> int:
        top = book.levels(1, 10) + book.levels(0, 10)  # asks then bids, best first
        return zlib.crc32("".join(text(p) + text(a) for p, a in top).encode())

    def levels(rows: list[list[str]]) -> str:
        return ",".join('{"price":%s,"qty":%s}' % (p, a if a != "0" else "0.00000000") for p, a in rows)  # noqa: UP031

    def book_frame(kind: str, bids: list[list[str]], asks: list[list[str]], ts: int) -> bytes:
        return (
            '{"channel":"book","type":"%s","data":[{"symbol":"%s","bids":[%s],"asks":[%s],"checksum":%d,'  # noqa: UP031
            '"timestamp":"%s"}]}' % (kind, pair, levels(bids), levels(asks), crc(), _rfc3339(ts, 6))
        ).encode()

    base, quote = pair.split("/")
    instrument = {
        "symbol": pair,
        "base": base,
        "quote": quote,
        "status": "online",
        "qty_precision": KRAKEN_QTY_PRECISION,
        "qty_increment": "QTYINC",
        "price_precision": KRAKEN_PRICE_PRECISION,
        "cost_precision": 5,
        "marginable": True,
        "has_index": True,
        "cost_min": 0.5,
        "tick_size": "TICK",
        "price_increment": "TICK",
        "qty_min": "QTYMIN",
    }
    doc = msgspec.json.encode(
        {"channel": "instrument", "type": "snapshot", "data": {"assets": [], "pairs": [instrument]}}
    )
    doc = doc.replace(b'"QTYINC"', b"0.00000001").replace(b'"TICK"', b"0.1").replace(b'"QTYMIN"', b"0.00005")
    out.append(doc)
    out.append(book_frame("snapshot", book.levels(0), book.levels(1), T0))
    for n, kind in enumerate(kinds[2:], start=2):
        ts = T0 + 2 * n
        if kind == "book":
            bids, asks = book.delta(_levels_per_delta(rng, spec))
            out.append(book_frame("update", bids, asks, ts))
        elif kind == "ticker":
            bid = book.levels(0, 1)[0]
            ask = book.levels(1, 1)[0]
            volume = f"{rng.randint(1000, 9999)}.{rng.randint(0, 10**8 - 1):08d}"
            out.append(
                (
                    '{"channel":"ticker","type":"update","data":[{"symbol":"%s","bid":%s,"bid_qty":%s,'  # noqa: UP031
                    '"ask":%s,"ask_qty":%s,"last":%s,"volume":%s,"vwap":64990.4,"low":63000.5,'
                    '"high":66000.0,"change":-458.2,"change_pct":-0.70,"timestamp":"%s"}]}'
                    % (pair, bid[0], bid[1], ask[0], ask[1], ask[0], volume, _rfc3339(ts, 6))
                ).encode()
            )
        else:
            trade_id += 1
            buy = rng.random() < 0.5  # `side` is the taker's (§10.3)
            out.append(
                (
                    '{"channel":"trade","type":"update","data":[{"symbol":"%s","side":"%s","price":%s,'  # noqa: UP031
                    '"qty":%s,"ord_type":"%s","trade_id":%d,"timestamp":"%s"}]}'
                    % (
                        pair,
                        "buy" if buy else "sell",
                        book.levels(1 if buy else 0, 1)[0][0],
                        size(),
                        "market" if rng.random() < 0.7 else "limit",
                        trade_id,
                        _rfc3339(ts - 1, 6),
                    )
                ).encode()
            )
    return Mix(spec, out, ["instrument", "book", *kinds[2:]], None)


_BUILDERS: dict[str, Callable[[MixSpec, list[str], random.Random], Mix]] = {
    "bybit": _bybit,
    "binance": _binance,
    "okx": _okx,
    "coinbase": _coinbase,
    "kraken": _kraken,
}
