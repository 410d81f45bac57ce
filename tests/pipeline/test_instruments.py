"""The instrument catalog on the simulator's REST: loaded at start, refreshed hourly, retried on failure."""

from __future__ import annotations

from decimal import Decimal

import trio

from marketflow.exchanges.base import Instrument
from marketflow.model import Contract
from marketflow.pipeline.instruments import InstrumentCatalog, MarketSymbols
from marketflow.pipeline.rest import RestClient, WeightBudget
from marketflow.sim import SimConfig, SimServer

MARKETS = [
    MarketSymbols("okx", "swap", {"BTC-USDT-SWAP": "BTC-USDT-PERP", "BTC-USD-SWAP": "BTC-USD-PERP"}),
    MarketSymbols("okx", "spot", {"BTC-USDT": "BTC-USDT"}),
    MarketSymbols("bybit", "spot", {"BTCUSDT": "BTC-USDT"}),
]


async def dead_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


async def test_loads_contract_terms_and_refreshes_hourly(autojump_clock: trio.abc.Clock) -> None:
    sim = SimServer(SimConfig(seed=3))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        clients = {(m.exchange, m.market): RestClient(sim.http_url, WeightBudget(10, 2.0)) for m in MARKETS}
        catalog = InstrumentCatalog(lambda: MARKETS, clients, refresh_s=3600.0)
        start = trio.current_time()
        await nursery.start(catalog.run)
        with trio.fail_after(5):
            while not catalog.loaded("okx", "spot"):  # noqa: ASYNC110 - the catalog has no event for it
                await trio.sleep(0.01)
        assert catalog.instruments[("okx", "BTC-USD-PERP")] == Instrument(
            "BTC-USD-SWAP", "contracts", Decimal("100"), "USD", True, Decimal("0.1"), Decimal("0.1")
        )
        assert catalog.contracts == {
            ("okx", "BTC-USDT-PERP"): Contract(Decimal("0.01")),
            ("okx", "BTC-USD-PERP"): Contract(Decimal("100"), inverse=True),
        }
        assert catalog.instruments[("okx", "BTC-USDT")].amount_unit == "base"
        assert catalog.loaded("bybit", "spot") and ("bybit", "BTC-USDT") not in catalog.instruments
        assert catalog.statistics().loads == 3
        await trio.sleep_until(start + 3600.5)
        assert catalog.statistics().loads == 6 and catalog.statistics().failures == 0
        nursery.cancel_scope.cancel()


async def test_a_failed_load_is_retried_sooner_and_keeps_what_was_known(
    autojump_clock: trio.abc.Clock,
) -> None:
    port = await dead_port()
    clients = {("okx", "swap"): RestClient(f"http://127.0.0.1:{port}", WeightBudget(10, 2.0))}
    catalog = InstrumentCatalog(lambda: MARKETS[:1], clients, refresh_s=3600.0, retry_s=30.0)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(catalog.run)
        await trio.sleep(1)
        assert catalog.statistics().failures == 1 and not catalog.loaded("okx", "swap")
        assert "okx swap" in (catalog.statistics().last_error or "")
        await trio.sleep_until(start + 31)
        assert catalog.statistics().failures == 2
        catalog.request_refresh()
        await trio.sleep(0.5)
        assert catalog.statistics().failures == 3
        nursery.cancel_scope.cancel()
