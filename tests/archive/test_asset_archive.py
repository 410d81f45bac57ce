"""`asset=` queries (SPEC §15) over archived days answer exactly what the database alone answered (both
engines): every market of the asset reads through the archive where the range touches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marketflow.api import asset_queries
from marketflow.archive.mover import Archiver
from marketflow.config import parse_config
from marketflow.daemon import Daemon
from tests.archive.helpers import BASE, DAY_US, filled_store, make_trades

NOW = BASE + 3 * DAY_US + 5_000_000
FEEDS = """
[[feeds]]
exchange = "bybit"
market = "spot"
symbols = ["BTC-USDT", "ETH-USDT"]
[[feeds]]
exchange = "binance"
market = "spot"
symbols = ["BTC-USDT", "ETH-USDT"]
"""


def _daemon(url: str, state: Path, after_days: int) -> Daemon:
    text = (
        f'[daemon]\nstate_dir = "{state}"\n[storage]\nurl = "{url}"\n[archive]\nafter_days = {after_days}\n'
        + FEEDS
    )
    return Daemon(parse_config(text, env={}))


async def _answers(daemon: Daemon) -> list[Any]:
    ctx = daemon.query
    out: list[Any] = []
    for asset in ("BTC", "ETH"):
        for since, until in ((BASE, BASE + DAY_US), (BASE + DAY_US // 2, BASE + 5 * DAY_US // 2)):
            out.append(await asset_queries.asset_order_flow(ctx, asset, None, None, "4h", since, until))
            out.append(await asset_queries.asset_candles(ctx, asset, None, None, "1h", since, until, 10_000))
            out.append(await asset_queries.asset_volume_profile(ctx, asset, None, None, since, until, "0.5"))
    return out


async def test_asset_views_across_the_archive_boundary_equal_a_database_only_run(
    store_url: str, pg_cluster: object, tmp_path: Path
) -> None:
    trades = make_trades(days=3, per_day=60)
    plain_url = f"sqlite:///{tmp_path}/plain.db"
    for url in (store_url, plain_url):
        store = await filled_store(url, trades)
        await store.close()
    archived = _daemon(store_url, tmp_path / "a", 1)
    plain = _daemon(plain_url, tmp_path / "p", 0)
    await archived.store.open()
    await plain.store.open()
    try:
        await Archiver(archived.store, archived.archive.root, 1, clock=lambda: NOW).run_once()  # type: ignore[union-attr]
        assert await archived.store.count_trades() < len(trades)  # type: ignore[attr-defined]
        got = await _answers(archived)
        expected = await _answers(plain)
        assert got == expected
        flows = [a for a in expected if "bars" in a]
        assert all(a["bars"] for a in flows)
        assert {k for a in flows for b in a["bars"] for k in b["by_venue"]} == {
            "binance/spot/BTC-USDT",
            "binance/spot/ETH-USDT",
            "bybit/spot/BTC-USDT",
            "bybit/spot/ETH-USDT",
        }
    finally:
        await archived.store.close()
        await plain.store.close()
