"""A dropped connection carrying liquidations records a closed `liquidations` gap over the outage, shown
by `/gaps`, for every venue that publishes them (no venue sends missed liquidations again)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.faults import Faults
from tests.test_market_data_end_to_end import _config

REASON = "disconnected; liquidations in between are not recoverable"


@pytest.mark.parametrize(("exchange", "market"), [("bybit", "linear"), ("binance", "usdm"), ("okx", "swap")])
async def test_a_dropped_liquidations_connection_records_a_gap(
    tmp_path: Path, exchange: str, market: str
) -> None:
    sim = SimServer(SimConfig(seed=7, rate=20, faults=Faults(drop_every_s=0.5)))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(_config(tmp_path, sim, exchange, market, ("derivatives", "liquidations")))
            await nursery.start(daemon.run)
            url = f"http://127.0.0.1:{daemon.http.port}/gaps"
            async with httpx.AsyncClient() as client:

                async def liquidation_gaps() -> list[dict[str, object]]:
                    body = (await client.get(url, params={"exchange": exchange})).json()
                    return [g for g in body["gaps"] if g["channel"] == "liquidations"]

                found: list[dict[str, object]] = []
                while not found:
                    found = await liquidation_gaps()
                    await trio.sleep(0.05)
            gap = found[0]
            assert gap["symbol"] == "BTC-USDT-PERP" and gap["reason"] == REASON
            assert gap["end"] is not None and str(gap["start"]) < str(gap["end"])
            await daemon.stop()
            nursery.cancel_scope.cancel()
