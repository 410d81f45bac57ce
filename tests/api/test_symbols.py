"""The symbols API changes subscriptions live and writes them back into the TOML, keeping its comments."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from marketflow.api.keys import KeyStore, key_store_path
from marketflow.config import load_config
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from tests.conftest import stored_rows, wait_for


async def test_add_and_remove_symbols_over_http(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=71, rate=30, book_rate=10))
    path = tmp_path / "marketflow.toml"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            path.write_text(
                f'[http]\nlisten = "127.0.0.1:0"\n[daemon]\nstate_dir = "{tmp_path}"\n'
                f'[storage]\nurl = "sqlite:///{tmp_path}/mf.db"\nflush_interval_s = 0.05\n'
                f'[[feeds]]\nexchange = "bybit"\nmarket = "linear"\n'
                f'symbols = ["BTCUSDT"]   # my perpetuals, keep this comment\n'
                f'ws_url = "{sim.bybit_ws_url("linear")}"\nrest_url = "{sim.http_url}"\n'
            )
            daemon = Daemon(load_config(path, env={}))
            await nursery.start(daemon.run)
            writer, _ = KeyStore(key_store_path(str(tmp_path))).create("ops", "write")
            reader, _ = KeyStore(key_store_path(str(tmp_path))).create("dash", "read")
            async with httpx.AsyncClient(base_url=str(daemon.http.url)) as client:
                listing = (await client.get("/collectors/symbols")).json()
                assert listing["feeds"][0]["symbols"] == ["BTC-USDT-PERP"] and listing["config"] == str(path)
                params = {"exchange": "bybit", "market": "linear", "symbol": "ETHUSDT"}
                # Writes always need a key, even on loopback; a read key is not enough.
                assert (await client.post("/collectors/symbols", params=params)).status_code == 401
                refused = await client.post(
                    "/collectors/symbols", params=params, headers={"X-API-Key": reader}
                )
                assert refused.status_code == 403
                added = await client.post("/collectors/symbols", params=params, headers={"X-API-Key": writer})
                assert added.status_code == 200, added.text
                body = added.json()
                assert body["restarted"] == ["bybit-linear"]
                assert body["feeds"][0]["symbols"] == ["BTC-USDT-PERP", "ETH-USDT-PERP"]
                text = path.read_text()
                assert 'symbols = ["BTCUSDT", "ETH-USDT-PERP"]   # my perpetuals, keep this comment' in text
                db = tmp_path / "mf.db"
                await wait_for(lambda: any(r[1] == "ETH-USDT-PERP" for r in stored_rows(db)), 0.05)
                # Bad changes: named, and the file is untouched.
                again = await client.post("/collectors/symbols", params=params, headers={"X-API-Key": writer})
                assert (again.status_code, again.json()["error"]) == (400, "bad_symbol_change")
                assert "already collected" in again.json()["detail"]
                unknown = await client.delete(
                    "/collectors/symbols/DOGEUSDT",
                    params={"exchange": "bybit", "market": "linear"},
                    headers={"Authorization": f"Bearer {writer}"},
                )
                assert unknown.status_code == 404 and path.read_text() == text
                removed = await client.delete(
                    "/collectors/symbols/BTC-USDT-PERP",
                    params={"exchange": "bybit", "market": "linear"},
                    headers={"X-API-Key": writer},
                )
                assert removed.status_code == 200 and removed.json()["feeds"][0]["symbols"] == [
                    "ETH-USDT-PERP"
                ]
                assert 'symbols = ["ETHUSDT"]   # my perpetuals, keep this comment' in path.read_text()
                assert daemon.config.feeds[0].symbols == ("ETH-USDT-PERP",)
            await daemon.stop()
            nursery.cancel_scope.cancel()


async def test_built_in_defaults_have_no_file_to_write(tmp_path: Path) -> None:
    from tests.conftest import sim_config

    sim = SimServer(SimConfig(seed=72, rate=10))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            daemon = Daemon(sim_config(tmp_path, sim, markets=("spot",)))
            await nursery.start(daemon.run)
            writer, _ = KeyStore(key_store_path(str(tmp_path))).create("ops", "write")
            async with httpx.AsyncClient(base_url=str(daemon.http.url)) as client:
                response = await client.post(
                    "/collectors/symbols",
                    params={"exchange": "bybit", "market": "spot", "symbol": "SOLUSDT"},
                    headers={"X-API-Key": writer},
                )
            assert (response.status_code, response.json()["error"]) == (409, "no_config_file")
            await daemon.stop()
            nursery.cancel_scope.cancel()
