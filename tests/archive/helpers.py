"""Trades over several days with mixed decimal spellings, written through the real stores."""

from __future__ import annotations

from decimal import Decimal

from marketflow.model import Trade
from marketflow.storage import open_store
from marketflow.storage.writer import TradeStore

DAY_US = 86_400_000_000
DAY0 = 20_674  # 2026-08-09
BASE = DAY0 * DAY_US
PRICES = (
    "65114.20",
    "65114.2",
    "1.5",
    "1.50",
    "0.00062000",
    "65100",
    "0.00000010",
    "65120.123456789012345678",
)
AMOUNTS = ("0.00062000", "1.5", "1.50", "2", "0.001", "0.000000000000000001", "12345678901234567890.5")


def make_trades(
    days: int = 3, per_day: int = 40, symbols: tuple[str, ...] = ("BTC-USDT", "ETH-USDT")
) -> list[Trade]:
    """`per_day` trades a day and symbol on `days` days from 2026-08-09, some at the same µs (ids decide),
    ids of different lengths (code-point order differs from numeric order), every spelling above."""
    out: list[Trade] = []
    n = 0
    for day in range(days):
        for symbol in symbols:
            for i in range(per_day):
                ts = BASE + day * DAY_US + (i // 2) * 997_000_003 % DAY_US
                out.append(
                    Trade(
                        "bybit" if i % 3 else "binance",
                        symbol,
                        str(n * 7 % 1000),
                        Decimal(PRICES[n % len(PRICES)]),
                        Decimal(AMOUNTS[n % len(AMOUNTS)]),
                        "buy" if n % 2 else "sell",
                        ts,
                        ts + 1234,
                    )
                )
                n += 1
    return out


async def filled_store(url: str, trades: list[Trade]) -> TradeStore:
    store = open_store(url)
    await store.open()
    await store.write_trades(trades)
    return store


def text_row(t: Trade) -> tuple[object, ...]:
    """A trade as the archive's row form and the API shows decimals: exact plain text."""
    return (t.exchange, t.symbol, t.ts, t.id, format(t.price, "f"), format(t.amount, "f"), t.side, t.recv_ts)


async def all_rows(store: TradeStore) -> list[tuple[object, ...]]:
    trades = await store.query_trades()  # type: ignore[attr-defined]
    return sorted(text_row(t) for t in trades)
