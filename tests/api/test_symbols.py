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
from tests.readonly import read_only


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
                assert 'symbols = ["ETH-USDT-PERP"]   # my perpetuals, keep this comment' in path.read_text()
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


def _config_text(tmp_path: Path, sim: SimServer, state: Path) -> str:
    return (
        f'[http]\nlisten = "127.0.0.1:0"\n[daemon]\nstate_dir = "{state}"\n'
        f'[storage]\nurl = "sqlite:///{state}/mf.db"\nflush_interval_s = 0.05\n'
        f'[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\nchannels = ["trades"]\n'
        f'ws_url = "{sim.bybit_ws_url("spot")}"\nrest_url = "{sim.http_url}"\n'
    )


async def test_concurrent_changes_are_all_kept(tmp_path: Path) -> None:
    """Eight changes at once: each reads, edits, writes and applies under one lock, so none is lost."""
    sim = SimServer(SimConfig(seed=73, rate=10))
    path = tmp_path / "marketflow.toml"
    added = ["SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "LTCUSDT", "DOTUSDT", "LINKUSDT", "AVAXUSDT"]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            path.write_text(_config_text(tmp_path, sim, tmp_path))
            daemon = Daemon(load_config(path, env={}))
            await nursery.start(daemon.run)
            writer, _ = KeyStore(key_store_path(str(tmp_path))).create("ops", "write")
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=str(daemon.http.url), timeout=30) as client:

                async def post(symbol: str) -> None:
                    response = await client.post(
                        "/collectors/symbols",
                        params={"exchange": "bybit", "market": "spot", "symbol": symbol},
                        headers={"X-API-Key": writer},
                    )
                    statuses.append(response.status_code)

                async with trio.open_nursery() as posts:
                    for symbol in added:
                        posts.start_soon(post, symbol)
            assert statuses == [200] * len(added)
            expected = {"BTC-USDT", *(s.removesuffix("USDT") + "-USDT" for s in added)}
            assert set(daemon.config.feeds[0].symbols) == expected
            assert set(load_config(path, env={}).feeds[0].symbols) == expected
            await daemon.stop()
            nursery.cancel_scope.cancel()


async def test_refusals_are_clear_never_500(tmp_path: Path) -> None:
    """Junk symbols: 400; an edit saved, not reloaded, or half-done: 409 (reload first); nothing written."""
    sim = SimServer(SimConfig(seed=74, rate=10))
    path = tmp_path / "marketflow.toml"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            text = _config_text(tmp_path, sim, tmp_path)
            path.write_text(text)
            daemon = Daemon(load_config(path, env={}))
            await nursery.start(daemon.run)
            writer, _ = KeyStore(key_store_path(str(tmp_path))).create("ops", "write")
            headers = {"X-API-Key": writer}
            async with httpx.AsyncClient(base_url=str(daemon.http.url)) as client:

                async def post(symbol: str, market: str = "spot") -> httpx.Response:
                    params = {"exchange": "bybit", "market": market, "symbol": symbol}
                    return await client.post("/collectors/symbols", params=params, headers=headers)

                for junk in ("DOGEUSDT\n\t ", "D" * 5000, "DОGEUSDT", "DOGE-USDT-PERP"):
                    refused = await post(junk)
                    assert (refused.status_code, refused.json()["error"]) == (400, "bad_symbol"), junk
                    assert len(refused.text) < 500  # a 5,000-character symbol is not echoed back
                wrong_market = await post("DOGEUSDT", market="usdm")
                assert wrong_market.status_code == 400 and "bybit has no market 'usdm'" in wrong_market.text
                gone = await client.delete(
                    "/collectors/symbols/BTC%20USDT",
                    params={"exchange": "bybit", "market": "spot"},
                    headers=headers,
                )
                assert (gone.status_code, gone.json()["error"]) == (400, "bad_symbol")
                assert path.read_text() == text
                # A person's saved edit the daemon has not loaded is not applied behind their back.
                edited = text.replace('channels = ["trades"]', 'channels = ["trades", "book"]')
                path.write_text(edited)
                stale = await post("DOGEUSDT")
                assert (stale.status_code, stale.json()["error"]) == (409, "config_changed")
                assert "reload first" in stale.json()["detail"] and path.read_text() == edited
                path.write_text(edited + "[[feeds]]\nexchange = ")  # saved half-way through
                half = await post("DOGEUSDT")
                assert (half.status_code, half.json()["error"]) == (409, "config_changed")
                assert "invalid TOML" in half.json()["detail"]
                path.write_text(edited)
                assert await daemon.reload() is not None  # SIGHUP: checked, applied, and now built on
                ok = await post("DOGEUSDT")
                assert ok.status_code == 200, ok.text
                assert daemon.config.feeds[0].channels == ("trades", "book")
                assert daemon.config.feeds[0].symbols == ("BTC-USDT", "DOGE-USDT")
            await daemon.stop()
            nursery.cancel_scope.cancel()


async def test_a_read_only_config_takes_changes_in_the_overlay(tmp_path: Path) -> None:
    """The shipped unit and container: /etc is read-only, the change lands in <state_dir>/symbols.toml, is
    applied live, and is still there after a reload and at the next start."""
    sim = SimServer(SimConfig(seed=75, rate=30))
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    path = etc / "marketflow.toml"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            text = _config_text(tmp_path, sim, state).replace("ws_url", "# the operator's file\nws_url")
            path.write_text(text)
            with read_only(etc):
                daemon = Daemon(load_config(path, env={}))
                await nursery.start(daemon.run)
                await _change_in_overlay(daemon, path, state)
            assert path.read_text() == text
            nursery.cancel_scope.cancel()


async def _change_in_overlay(daemon: Daemon, path: Path, state: Path) -> None:
    writer, _ = KeyStore(key_store_path(str(state))).create("ops", "write")
    async with httpx.AsyncClient(base_url=str(daemon.http.url)) as client:
        response = await client.post(
            "/collectors/symbols",
            params={"exchange": "bybit", "market": "spot", "symbol": "ETHUSDT"},
            headers={"X-API-Key": writer},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["written"] == str(state / "symbols.toml") and body["restarted"] == ["bybit-spot"]
    assert body["feeds"][0]["symbols"] == ["BTC-USDT", "ETH-USDT"]
    await wait_for(lambda: any(r[1] == "ETH-USDT" for r in stored_rows(state / "mf.db")), 0.05)
    reloaded = await daemon.reload()
    assert reloaded is not None and reloaded.restarted == ()
    assert load_config(path, env={}).feeds[0].symbols == ("BTC-USDT", "ETH-USDT")
    await daemon.stop()
