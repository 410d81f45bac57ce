"""Reload (SIGHUP and the symbols API's path): only changed feeds restart; an invalid file changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import trio

from marketflow.config import DEFAULT_FEEDS, Config, load_config, parse_config
from marketflow.config.edit import edit_symbols
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from tests.conftest import stored_rows, wait_for


def write_config(path: Path, tmp_path: Path, sim: SimServer, *, spot: bool) -> None:
    text = (
        f'[http]\nlisten = "127.0.0.1:0"\n[daemon]\nstate_dir = "{tmp_path}"\nshutdown_timeout_s = 5\n'
        f'[storage]\nurl = "sqlite:///{tmp_path}/mf.db"\nflush_interval_s = 0.05\n'
        f"[supervisor]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.2\n"
        f"# the perpetuals\n"
        f'[[feeds]]\nexchange = "bybit"\nmarket = "linear"\nsymbols = ["BTCUSDT"]  # just BTC for now\n'
        f'channels = ["trades", "book"]\nws_url = "{sim.bybit_ws_url("linear")}"\n'
        f'rest_url = "{sim.http_url}"\n'
    )
    if spot:
        text += (
            f'[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = ["ETHUSDT"]\n'
            f'channels = ["trades"]\nws_url = "{sim.bybit_ws_url("spot")}"\nrest_url = "{sim.http_url}"\n'
        )
    path.write_text(text)


def children(daemon: Daemon) -> dict[str, tuple[str, int, float | None]]:
    """State, restarts and start time of every actor: equal means it kept running untouched."""
    return {c.name: (c.state, c.restarts, c.started_at) for c in daemon.supervisor.statistics().children}


async def test_reload_starts_only_new_feeds_and_keeps_running_on_invalid_files(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=61, rate=30, book_rate=10))
    path = tmp_path / "marketflow.toml"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            write_config(path, tmp_path, sim, spot=False)
            daemon = Daemon(load_config(path, env={}))
            await nursery.start(daemon.run)
            linear = daemon.feed_counters["bybit-linear"]
            await wait_for(lambda: linear.state == "streaming" and linear.data_frames > 5, 0.02)
            before = children(daemon)

            # An invalid file: logged, refused, nothing changes.
            good = path.read_text()
            path.write_text(good + "[[feeds]]\nexchange = 'bybit'\nmarket = 'spot'\nsymbls = ['X']\n")
            assert await daemon.reload() is None
            assert children(daemon) == before and linear.connects == 1

            # A new feed: only it starts; the running feed, storage, books keep their actors and state.
            write_config(path, tmp_path, sim, spot=True)
            result = await daemon.reload()
            assert result is not None and result.added == ("bybit-spot",) and result.restarted == ()
            spot = daemon.feed_counters["bybit-spot"]
            await wait_for(lambda: spot.state == "streaming" and spot.data_frames > 3, 0.02)
            after = children(daemon)
            assert {k: v for k, v in after.items() if k in before} == before
            assert linear.connects == 1

            # The symbols API's path: an edit to the file restarts just the edited feed.
            new = edit_symbols(path, exchange="bybit", market="linear", symbol="ETHUSDT", add=True, env={})
            result = await daemon.apply_config(new)
            assert result.restarted == ("bybit-linear",) and result.added == result.removed == ()
            relinked = daemon.feed_counters["bybit-linear"]
            await wait_for(lambda: relinked.state == "streaming" and relinked.data_frames > 3, 0.02)
            assert children(daemon)["bybit-spot"] == after["bybit-spot"]
            assert "# just BTC for now" in path.read_text()
            db = tmp_path / "mf.db"
            await wait_for(lambda: any(r[1] == "ETH-USDT-PERP" for r in stored_rows(db)), 0.05)
            view = daemon.books.view
            await wait_for(lambda: getattr(view("bybit", "ETH-USDT-PERP"), "status", None) == "synced", 0.02)

            # Removing a feed stops it and forgets its books.
            new = edit_symbols(path, exchange="bybit", market="spot", symbol="ETHUSDT", add=False, env={})
            result = await daemon.apply_config(new)
            assert result.removed == ("bybit-spot",)
            assert "bybit-spot" not in children(daemon) and "bybit-spot" not in daemon.feed_counters
            assert "bybit-spot" not in daemon.actors  # the stopped feed actor is not kept either
            await daemon.stop()
            nursery.cancel_scope.cancel()
    symbols = {row[1] for row in stored_rows(tmp_path / "mf.db")}
    assert {"BTC-USDT-PERP", "ETH-USDT", "ETH-USDT-PERP"} <= symbols


async def test_sighup_reloads_the_file(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=62, rate=30))
    path = tmp_path / "marketflow.toml"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            write_config(path, tmp_path, sim, spot=False)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "marketflow", "run", "--config", str(path)],
                env={**os.environ, "MARKETFLOW_STORAGE_URL": ""},
                stderr=subprocess.DEVNULL,
            )
            db = tmp_path / "mf.db"
            await wait_for(lambda: db.exists() and any(r[1] == "BTC-USDT-PERP" for r in stored_rows(db)), 0.1)
            write_config(path, tmp_path, sim, spot=True)
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: any(r[1] == "ETH-USDT" for r in stored_rows(db)), 0.1)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            nursery.cancel_scope.cancel()


async def test_every_section_but_feeds_is_reported_as_needing_a_restart(tmp_path: Path) -> None:
    """A changed section that a reload cannot apply is named, never silently dropped (archive, nats, ...)."""
    text = f'[daemon]\nstate_dir = "{tmp_path}"\n[storage]\nurl = "sqlite:///{tmp_path}/mf.db"\n'
    base = parse_config(text + "[[feeds]]\nexchange = 'bybit'\nmarket = 'spot'\nsymbols = ['BTCUSDT']\n")
    daemon = Daemon(attrs.evolve(base, feeds=DEFAULT_FEEDS[:1]))
    sections = [f.name for f in attrs.fields(Config) if f.name not in ("feeds", "source", "digest")]
    assert "archive" in sections and "nats" in sections
    for name in sections:
        changed = attrs.evolve(daemon.config, **{name: _changed(getattr(daemon.config, name))})
        result = await daemon.apply_config(changed)
        assert result.needs_restart == (name,), name


def _changed(section: object) -> object:
    """The same section with its first simple setting changed."""
    for field in attrs.fields(type(section)):
        value = getattr(section, field.name)
        if isinstance(value, bool):
            return attrs.evolve(section, **{field.name: not value})
        if isinstance(value, int | float) and not isinstance(value, bool):
            return attrs.evolve(section, **{field.name: value + 1})
        if isinstance(value, str):
            return attrs.evolve(section, **{field.name: value + "x"})
    raise AssertionError(f"no simple setting to change in {section!r}")
