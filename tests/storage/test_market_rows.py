"""The SPEC §12 tables on both engines: exact decimals and nulls, idempotent liquidations, samples upserted
by instant, newest-first reads with bounds, and retention that covers them."""

from __future__ import annotations

from decimal import Decimal

import trio

from marketflow.model import DerivativesTick, Liquidation, Trade, now_us
from marketflow.pipeline.market_data import Quote
from marketflow.runtime.bus import Bus, Overflow
from marketflow.storage import open_store
from marketflow.storage.writer import StorageWriter
from tests.storage.helpers import wait_real

D = Decimal
T0 = 1_700_000_000_000_000
DAY = 86_400_000_000


def sample(i: int, *, ts: int | None = None, oi: str | None = "68744.761") -> DerivativesTick:
    """A stored sample (no receive time of its own is kept: it reads back as `ts`)."""
    when = T0 + i * 1_000_000 if ts is None else ts
    return DerivativesTick(
        "bybit",
        "BTC-USDT-PERP",
        when,
        when,
        D("17217.30") + i,
        D("17227.36"),
        D("-0.000212"),
        1673280000000000,
        None if oi is None else D(oi),
        None,
        snapshot=True,
    )


def liquidation(i: int, *, ts: int | None = None) -> Liquidation:
    when = T0 + i * 1000 if ts is None else ts
    return Liquidation(
        "binance", "BTC-USDT-PERP", f"{when // 1000}:SELL:9910.10:0.0140", "sell", D("9910.10"), D("0.0140"),
        when, when + 5,
    )  # fmt: skip


async def test_rows_are_exact_idempotent_and_newest_first(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        await store.write_derivatives([sample(i) for i in range(5)] + [sample(9, oi=None)])  # type: ignore[attr-defined]
        # A late field of an instant already stored replaces its row.
        await store.write_derivatives([sample(2, oi="1.000")])  # type: ignore[attr-defined]
        rows = await store.query_derivatives("bybit", "BTC-USDT-PERP", None, None, None)  # type: ignore[attr-defined]
        assert [r.ts for r in rows] == [T0 + i * 1_000_000 for i in (9, 4, 3, 2, 1, 0)]
        assert rows[0] == sample(9, oi=None)
        assert str(rows[-1].mark_price) == "17217.30" and str(rows[-1].funding_rate) == "-0.000212"
        assert rows[3].open_interest == D("1.000") and str(rows[3].open_interest) == "1.000"
        assert rows[0].open_interest is None and rows[0].open_interest_value is None
        bounded = await store.query_derivatives(  # type: ignore[attr-defined]
            "bybit", "BTC-USDT-PERP", T0 + 1_000_000, T0 + 4_000_000, 2
        )
        assert [r.ts for r in bounded] == [T0 + 3_000_000, T0 + 2_000_000]

        batch = [liquidation(i) for i in range(4)]
        await store.write_liquidations(batch)  # type: ignore[attr-defined]
        await store.write_liquidations(batch[2:] + [liquidation(7)])  # type: ignore[attr-defined]
        stored = await store.query_liquidations("binance", "BTC-USDT-PERP", None, None, None)  # type: ignore[attr-defined]
        assert stored == sorted([*batch, liquidation(7)], key=lambda r: r.ts, reverse=True)
        assert str(stored[0].amount) == "0.0140"

        await store.write_quotes(  # type: ignore[attr-defined]
            [Quote("bybit", "BTC-USDT", T0, D("1.10"), D("2"), None, None)]
        )
    finally:
        await store.close()


async def test_retention_prunes_the_market_data_tables_too(store_url: str) -> None:
    now = now_us()
    seed = open_store(store_url)
    await seed.open()
    await seed.write_derivatives(  # type: ignore[attr-defined]
        [sample(i, ts=now - 10 * DAY + i) for i in range(30)] + [sample(99, ts=now - DAY)]
    )
    await seed.write_liquidations(  # type: ignore[attr-defined]
        [liquidation(i, ts=now - 10 * DAY + i * 1000) for i in range(20)] + [liquidation(99, ts=now - DAY)]
    )
    await seed.write_quotes(  # type: ignore[attr-defined]
        [Quote("bybit", "BTC-USDT", now - 10 * DAY + i, D("1"), D("1"), D("2"), D("1")) for i in range(10)]
    )
    await seed.close()

    store = open_store(store_url)
    bus: Bus[Trade] = Bus("trades")
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 8, Overflow.BLOCK),
        batch_max=20,
        flush_interval_s=0.005,
        retention_days=7,
        prune_batch=8,
        prune_pause_s=0.001,
        prune_interval_s=3600,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await wait_real(lambda: writer.statistics().pruned == 60)
            bus.close()
    check = open_store(store_url)
    await check.open()
    try:
        kept = await check.query_derivatives("bybit", "BTC-USDT-PERP", None, None, None)  # type: ignore[attr-defined]
        assert [r.ts for r in kept] == [now - DAY]
        liqs = await check.query_liquidations("binance", "BTC-USDT-PERP", None, None, None)  # type: ignore[attr-defined]
        assert [r.ts for r in liqs] == [now - DAY]
    finally:
        await check.close()
