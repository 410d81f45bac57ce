"""Large trades on contract markets (SPEC §11): notional price·amount·value (linear), amount·value (inverse).

The same trades are counted by the live engine and by stored ranges on both engines (SQLite in Python,
PostgreSQL in SQL); a market without a `Contract` keeps price·amount.
"""

from __future__ import annotations

from decimal import Decimal

import trio

from marketflow.analytics import AnalyticsEngine, parse_interval
from marketflow.analytics.stored import stored_order_flow
from marketflow.config import AnalyticsConfig
from marketflow.model import Contract, Trade, notional
from marketflow.storage import open_store

from .strategies import T0

LARGE = Decimal("10000")
MIN = 60_000_000
LINEAR = Contract(Decimal("0.01"))
INVERSE = Contract(Decimal("100"), inverse=True)


def trades(symbol: str) -> list[Trade]:
    rows = [
        ("100", "150"),  # price·amount 15000; linear 150, inverse 15000
        ("65000.5", "20"),  # 1300010; linear 13000.1, inverse 2000
        ("10", "120"),  # 1200; linear 12, inverse 12000
        ("99.99", "100"),  # 9999; linear 99.99, inverse 10000 (exactly the threshold: large)
    ]
    return [
        Trade("okx", symbol, str(i), Decimal(p), Decimal(a), "buy", T0 + i, T0 + i)
        for i, (p, a) in enumerate(rows)
    ]


def test_notional_per_contract_kind() -> None:
    price, amount = Decimal("65000.5"), Decimal("20")
    assert notional(price, amount, None) == Decimal("1300010.0")
    assert notional(price, amount, LINEAR) == Decimal("13000.100")
    assert notional(price, amount, INVERSE) == Decimal("2000")


def large_counts(contracts: dict[tuple[str, str], Contract]) -> dict[str, int]:
    config = AnalyticsConfig(candle_intervals=("1m",), large_trade_notional=LARGE)
    engine = AnalyticsEngine(None, config, contracts=contracts)  # type: ignore[arg-type]  # never run
    counts = {}
    for symbol in ("BTC-USDT", "BTC-USDT-PERP", "BTC-USD-PERP"):
        engine.ingest(trades(symbol))
        (bar,) = engine.order_flow("okx", symbol, "1m", T0)["bars"]
        counts[symbol] = bar["large_trades"]
    return counts


def test_live_engine_counts_large_trades_by_contract_notional() -> None:
    contracts = {("okx", "BTC-USDT-PERP"): LINEAR, ("okx", "BTC-USD-PERP"): INVERSE}
    assert large_counts(contracts) == {"BTC-USDT": 2, "BTC-USDT-PERP": 1, "BTC-USD-PERP": 3}
    # Without contract terms every market would count price·amount.
    assert large_counts({}) == {"BTC-USDT": 2, "BTC-USDT-PERP": 2, "BTC-USD-PERP": 2}


def test_stored_ranges_count_the_same_on_both_engines(store_url: str) -> None:
    async def main() -> None:
        store = open_store(store_url)
        await store.open()
        try:
            got = {}
            for symbol, contract in (
                ("BTC-USDT", None),
                ("BTC-USDT-PERP", LINEAR),
                ("BTC-USD-PERP", INVERSE),
            ):
                await store.write_trades(trades(symbol))
                flow = await stored_order_flow(
                    store,
                    None,
                    "okx",
                    symbol,
                    parse_interval("1m"),
                    T0,
                    None,
                    large_trade_notional=LARGE,
                    contract=contract,
                )
                got[symbol] = [bar["large_trades"] for bar in flow["bars"]]
        finally:
            await store.close()
        assert got == {"BTC-USDT": [2], "BTC-USDT-PERP": [1], "BTC-USD-PERP": [3]}

    trio.run(main)
