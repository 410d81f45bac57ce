"""Order-book micro-benchmark: realistic deltas applied to a depth-200 and a depth-1000 book.

    python -m benchmarks.books [--deltas N] [--levels K] [--repeat R]

Each delta touches about K levels per side, mostly near the touch (geometric position, mean ~8): 60%
amount changes, 20% deletes paired with 20% inserts into holes near the top (so depth stays put), plus
a few deletes of absent prices. Prices sit on a 0.1 grid as exact `Decimal`s. Timed per structure:

- apply: `apply()` then `crossed()` per delta (what a synchronizer does), as deltas/s and levels/s;
- top-20: `top(20)` reads/s on the final book;
- sync: `BybitBook.on_update` on the same deltas as `BookUpdate`s (id checks + apply + crossed check).

Structures: `OrderBook` (dict per side + bisect-maintained sorted price list, what marketflow uses)
against `sortedcontainers.SortedDict` per side. Best of R runs.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Protocol

from sortedcontainers import SortedDict, SortedList  # type: ignore[import-untyped]

from marketflow.exchanges.bybit.book import BybitBook
from marketflow.exchanges.orderbook import OrderBook
from marketflow.model import BookUpdate, Level


class Book(Protocol):
    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None: ...
    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None: ...
    def top(self, n: int) -> tuple[list[Level], list[Level]]: ...
    def crossed(self) -> bool: ...


class SortedDictBook:
    """The alternative: one `SortedDict` per side, price → latest (price, amount)."""

    def __init__(self) -> None:
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()

    @staticmethod
    def _apply(side: SortedDict, updates: Iterable[Level]) -> None:
        for level in updates:
            price, amount = level
            if amount:
                side[price] = level
            else:
                side.pop(price, None)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self._apply(self._bids, bids)
        self._apply(self._asks, asks)

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self._bids = SortedDict({level[0]: level for level in bids if level[1]})
        self._asks = SortedDict({level[0]: level for level in asks if level[1]})

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        bids = self._bids.values()[-n:] if n else []
        bids.reverse()
        return bids, self._asks.values()[:n]

    def crossed(self) -> bool:
        bids = self._bids
        asks = self._asks
        return bool(bids) and bool(asks) and bids.keys()[-1] >= asks.keys()[0]


TICK = Decimal("0.1")
MID_TICKS = 650_000  # 65000.0


def _price(ticks: int) -> Decimal:
    return Decimal(ticks) * TICK


def _amount(rng: random.Random) -> Decimal:
    return Decimal(f"{rng.uniform(0.001, 5):.3f}")


def make_deltas(
    depth: int, n: int, levels: int, seed: int = 1
) -> tuple[tuple[list[Level], list[Level]], list[tuple[list[Level], list[Level]]]]:
    """A depth-`depth` snapshot and `n` deltas keeping it at about that depth."""
    rng = random.Random(seed)
    sides: list[dict[int, Decimal]] = []
    for sign in (-1, 1):
        ticks = rng.sample(range(1, int(depth * 1.3) + 1), depth)
        sides.append({MID_TICKS + sign * t: _amount(rng) for t in ticks})
    bid_levels, ask_levels = ([(_price(t), a) for t, a in side.items()] for side in sides)
    snapshot = (bid_levels, ask_levels)

    # Ticks sorted best first: bids as negative ticks, so both sides ascend from the touch.
    ordered_sides = [SortedList(sign * t for t in side) for sign, side in zip((-1, 1), sides, strict=True)]

    def pick(ordered: SortedList, sign: int) -> int:
        pos = min(int(rng.expovariate(1 / 8)), len(ordered) - 1)
        return int(sign * ordered[pos])

    def put(side: dict[int, Decimal], ordered: SortedList, sign: int, t: int, amount: Decimal) -> None:
        if amount:
            if t not in side:
                ordered.add(sign * t)
            side[t] = amount
        elif side.pop(t, None) is not None:
            ordered.remove(sign * t)

    deltas = []
    for _ in range(n):
        out: list[list[Level]] = []
        for sign, side, ordered in zip((-1, 1), sides, ordered_sides, strict=True):
            changes: dict[int, Decimal] = {}
            for _ in range(max(1, round(rng.gauss(levels, levels / 3)))):
                r = rng.random()
                if r < 0.60:
                    t, amount = pick(ordered, sign), _amount(rng)
                elif r < 0.95:
                    # Every other such change deletes a level, the next fills a hole near the touch
                    # (on this side of the mid), so depth stays put.
                    if len(side) >= depth:
                        t, amount = pick(ordered, sign), Decimal("0")
                    else:
                        for attempt in range(10_000):
                            t = MID_TICKS + sign * (1 + int(rng.expovariate(1 / (8 + attempt))))
                            if t not in side:
                                break
                        amount = _amount(rng)
                else:
                    t, amount = MID_TICKS + sign * rng.randint(2 * depth, 3 * depth), Decimal("0.000")
                put(side, ordered, sign, t, amount)
                changes[t] = amount
            out.append([(_price(t), a) for t, a in changes.items()])
        deltas.append((out[0], out[1]))
    return snapshot, deltas


def _timed(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def apply_job(
    book: Book, snapshot: tuple[list[Level], list[Level]], deltas: list[tuple[list[Level], list[Level]]]
) -> Callable[[], int]:
    def run() -> int:
        book.replace(*snapshot)
        apply = book.apply
        crossed = book.crossed
        for bids, asks in deltas:
            apply(bids, asks)
            if crossed():
                raise AssertionError("benchmark book crossed")
        return len(deltas)

    return run


def top_job(book: Book, reads: int = 50_000) -> Callable[[], int]:
    def run() -> int:
        top = book.top
        for _ in range(reads):
            top(20)
        return reads

    return run


def sync_job(
    snapshot: tuple[list[Level], list[Level]], deltas: list[tuple[list[Level], list[Level]]]
) -> Callable[[], int]:
    first = 1000
    snap = BookUpdate("bybit", "BTC-USDT", True, first, first, None, snapshot[0], snapshot[1], 0, 0)
    updates = [
        BookUpdate("bybit", "BTC-USDT", False, first + i, first + i, None, bids, asks, 0, 0)
        for i, (bids, asks) in enumerate(deltas, start=1)
    ]

    def run() -> int:
        sync = BybitBook()
        sync.on_update(snap)
        on_update = sync.on_update
        for update in updates:
            if on_update(update) is not None:
                raise AssertionError("benchmark stream gapped")
        return len(updates)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deltas", type=int, default=20_000)
    parser.add_argument("--levels", type=int, default=10, help="mean levels per side per delta")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    structures: list[tuple[str, Callable[[], Book]]] = [
        ("OrderBook", OrderBook),
        ("SortedDict", SortedDictBook),
    ]
    print(
        f"order-book benchmark: {args.deltas} deltas, ~{args.levels} levels per side each, "
        f"best of {args.repeat}"
    )
    print(f"{'depth':>6}  {'structure':<12}{'deltas/s':>11}{'levels/s':>12}{'top-20 reads/s':>16}")
    for depth in (200, 1000):
        snapshot, deltas = make_deltas(depth, args.deltas, args.levels)
        per_delta = sum(len(b) + len(a) for b, a in deltas) / len(deltas)
        jobs: dict[tuple[str, str], Callable[[], int]] = {}
        for name, factory in structures:
            book = factory()
            jobs[name, "apply"] = apply_job(book, snapshot, deltas)
            jobs[name, "top"] = top_job(book)
        jobs["BybitBook", "apply"] = sync_job(snapshot, deltas)
        # Round-robin, best of R each, like timeit: on a shared machine the slower runs measure neighbours.
        best: dict[tuple[str, str], float] = dict.fromkeys(jobs, 0.0)
        for _ in range(args.repeat):
            for key, job in jobs.items():
                best[key] = max(best[key], _timed(job))
        for name in ("OrderBook", "SortedDict", "BybitBook"):
            rate = best[name, "apply"]
            reads = f"{best[name, 'top']:>16,.0f}" if (name, "top") in best else ""
            print(f"{depth:>6}  {name:<12}{rate:>11,.0f}{rate * per_delta:>12,.0f}{reads}")
        ratio_apply = best["OrderBook", "apply"] / best["SortedDict", "apply"]
        ratio_top = best["OrderBook", "top"] / best["SortedDict", "top"]
        print(f"        OrderBook / SortedDict: apply x{ratio_apply:.2f}, top-20 x{ratio_top:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
