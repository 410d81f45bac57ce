"""Queries over archived days answer exactly what the database alone answered (both engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marketflow.api import queries
from marketflow.archive.mover import Archiver
from marketflow.config import parse_config
from marketflow.daemon import Daemon
from tests.archive.helpers import BASE, DAY_US, filled_store, make_trades

NOW = BASE + 3 * DAY_US + 5_000_000


def _daemon(url: str, state: Path, after_days: int) -> Daemon:
    text = (
        f'[daemon]\nstate_dir = "{state}"\n[storage]\nurl = "{url}"\n[archive]\nafter_days = {after_days}\n'
    )
    return Daemon(parse_config(text, env={}))


async def _answers(daemon: Daemon) -> list[Any]:
    ctx = daemon.query
    out: list[Any] = []
    for symbol in ("BTC-USDT", "ETH-USDT"):
        for exchange in ("bybit", "binance"):
            # Ranges inside the archive, across its boundary with the database, and open-ended.
            for since, until in (
                (BASE, BASE + DAY_US),
                (BASE + DAY_US // 2, BASE + 5 * DAY_US // 2),
                (BASE, None),
            ):
                out.append(await queries.recent_trades(ctx, exchange, symbol, since, until, 10_000))
                out.append(await queries.recent_trades(ctx, exchange, symbol, since, until, 7))
                out.append(await queries.candles(ctx, exchange, symbol, "1h", since, until, 10_000))
                out.append(await queries.candles(ctx, exchange, symbol, "1d", since, until, 2))
                out.append(
                    await queries.order_flow(ctx, exchange, symbol, "4h", since, until, footprint=True)
                )
                out.append(await queries.volume_profile(ctx, exchange, symbol, since, until))
                out.append(await queries.volume_profile(ctx, exchange, symbol, since, until, bin="0.5"))
    return out


async def test_analytics_across_the_archive_boundary_equal_a_database_only_run(
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
        assert archived.archive is not None and plain.archive is None
        result = await Archiver(archived.store, archived.archive.root, 1, clock=lambda: NOW).run_once()
        assert result.trades == len([t for t in trades if t.ts < BASE + 2 * DAY_US]) and not result.failed
        assert await archived.store.count_trades() < len(trades)  # type: ignore[attr-defined]
        got = await _answers(archived)
        expected = await _answers(plain)
        assert got == expected
        assert expected[0]["count"] > 0 and any(a.get("candles") for a in expected)
        # The exchange's spelling survives the archive: "65114.20" and "65114.2" are both there.
        prices = {t["price"] for a in got if "trades" in a for t in a["trades"]}
        assert {"65114.20", "65114.2", "1.50", "1.5", "0.00000010"} <= prices
    finally:
        await archived.store.close()
        await plain.store.close()


async def test_a_file_out_of_order_is_refused_not_misread(tmp_path: Path) -> None:
    """Scans stream files in their own order (no sort of many days); a file that is not in (ts, id)
    order — not written by marketflow — is an error, never a wrong open or close."""
    import pyarrow.parquet as pq
    import pytest

    from marketflow.archive.reader import ArchivedReads, TradeArchive
    from marketflow.archive.tables import ArchiveError

    trades = make_trades(days=1, per_day=20)
    store = await filled_store(f"sqlite:///{tmp_path}/db.sqlite", trades)
    root = tmp_path / "archive"
    try:
        await Archiver(store, root, 1, clock=lambda: NOW).run_once()
        target = next(root.rglob("data.parquet"))
        table = pq.read_table(target)
        pq.write_table(table.take(list(reversed(range(table.num_rows)))), target)
        reads = ArchivedReads(store, TradeArchive(root))
        exchange, symbol = target.parts[-4].split("=")[1], target.parts[-3].split("=")[1]
        with pytest.raises(ArchiveError, match=r"not in \(ts, id\) order"):
            await reads.first_trade(exchange, symbol, None, None)
    finally:
        await store.close()
