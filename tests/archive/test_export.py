"""`marketflow export`: Parquet/CSV partitions read back by DuckDB and pyarrow equal the database exactly."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from marketflow import progress
from marketflow.analytics.candles import Candle
from marketflow.archive.db import source_for
from marketflow.archive.export import export_tables
from marketflow.archive.tables import TABLES, ArchiveError, parse_tables
from marketflow.cli import main
from marketflow.model import GapRecord
from tests.archive.helpers import BASE, DAY_US, all_rows, filled_store, make_trades

TRADES = TABLES["trades"]


def _spelled(value: Decimal, scale: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-scale)), "f")


def duckdb_rows(out: Path) -> list[tuple[object, ...]]:
    rows = duckdb.sql(
        "SELECT exchange, symbol, epoch_us(ts), id, price, price_scale, amount, amount_scale, side, "
        f"epoch_us(recv_ts) FROM read_parquet('{out}/trades/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    return sorted(
        (r[0], r[1], r[2], r[3], _spelled(r[4], r[5]), _spelled(r[6], r[7]), r[8], r[9]) for r in rows
    )


def pyarrow_rows(out: Path) -> list[tuple[object, ...]]:
    table = ds.dataset(out / "trades", format="parquet", partitioning="hive").to_table()
    us = pa.int64()
    out_rows = [
        (
            r["exchange"],
            r["symbol"],
            pa.scalar(r["ts"], pa.timestamp("us", tz="UTC")).cast(us).as_py(),
            r["id"],
            _spelled(r["price"], r["price_scale"]),
            _spelled(r["amount"], r["amount_scale"]),
            r["side"],
            pa.scalar(r["recv_ts"], pa.timestamp("us", tz="UTC")).cast(us).as_py(),
        )
        for r in table.to_pylist()
    ]
    return sorted(out_rows)


async def test_export_reads_back_exactly_with_duckdb_and_pyarrow(store_url: str, tmp_path: Path) -> None:
    trades = make_trades()
    store = await filled_store(store_url, trades)
    try:
        out = tmp_path / "out"
        summary = await export_tables(source_for(store), [TRADES], out, BASE, BASE + 3 * DAY_US)
        expected = await all_rows(store)
    finally:
        await store.close()
    assert summary.rows == len(trades) == len(expected)
    assert duckdb_rows(out) == expected
    assert pyarrow_rows(out) == expected
    # One file per (exchange, symbol, day): 2 exchanges x 2 symbols x 3 days.
    written = sorted(out.rglob("*.parquet"))
    assert len(written) == summary.tables["trades"].partitions == 12
    assert written[0].relative_to(out).parts[:4] == (
        "trades",
        "exchange=binance",
        "symbol=BTC-USDT",
        "date=2026-08-09",
    )
    meta = pq.ParquetFile(written[0])
    schema = meta.schema_arrow
    assert schema.field("price").type == pa.decimal128(38, 18)
    assert schema.field("amount").type == pa.decimal128(38, 18)
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    # "65114.20" and "65114.2" both stay as written (the DECIMAL alone would pad both to 18 digits).
    prices = {r[4] for r in expected}
    assert {"65114.20", "65114.2", "1.5", "1.50", "0.00062000", "0.00000010"} <= prices


async def test_exporting_again_merges_into_the_same_files(store_url: str, tmp_path: Path) -> None:
    trades = make_trades(days=2, per_day=10)
    store = await filled_store(store_url, trades[:30])
    out = tmp_path / "out"
    try:
        source = source_for(store)
        await export_tables(source, [TRADES], out, BASE, BASE + DAY_US // 2)  # half of day 0
        await export_tables(source, [TRADES], out, BASE, BASE + 2 * DAY_US)
        files_once = sorted(out.rglob("*"))
        await export_tables(source, [TRADES], out, BASE, BASE + 2 * DAY_US)  # idempotent
        assert sorted(out.rglob("*")) == files_once
        assert duckdb_rows(out) == await all_rows(store)
        await store.write_trades(trades[30:])  # more rows, some in partitions that have a file
        await export_tables(source, [TRADES], out, BASE, BASE + 2 * DAY_US)
        assert duckdb_rows(out) == await all_rows(store)
        per_dir = {p.parent for p in out.rglob("*.parquet")}
        assert len(per_dir) == len(list(out.rglob("*.parquet")))  # one file per partition, no swarm
        assert not [p for p in out.rglob(".*")]  # no temporary files left
    finally:
        await store.close()


async def test_candles_and_gaps_export_exactly(store_url: str, tmp_path: Path) -> None:
    store = await filled_store(store_url, [])
    candle = Candle(
        "bybit",
        "BTC-USDT",
        "1m",
        BASE + 60_000_000,
        Decimal("65114.20"),
        Decimal("65120.5"),
        Decimal("65100"),
        Decimal("65110.00"),
        Decimal("3.0000001"),
        Decimal("1.5"),
        Decimal("1.5000001"),
        7,
        Decimal("65111.1234567890123456789012"),
    )
    gap = GapRecord("binance", "ETH-USDT", "trades", BASE + 5, None, "reconnect", 0)
    closed = GapRecord("binance", "ETH-USDT", "book", BASE + DAY_US + 9, BASE + DAY_US + 99, "sequence", 3)
    try:
        await store.write_candles([candle])  # type: ignore[attr-defined]
        await store.write_gaps([gap, closed])  # type: ignore[attr-defined]
        out = tmp_path / "out"
        summary = await export_tables(
            source_for(store), parse_tables("candles,gaps"), out, BASE, BASE + 2 * DAY_US
        )
    finally:
        await store.close()
    assert summary.tables["candles"].rows == 1 and summary.tables["gaps"].rows == 2
    row = duckdb.sql(
        f"SELECT * FROM read_parquet('{out}/candles/**/*.parquet', hive_partitioning = true)"
    ).fetchall()[0]
    names = [
        d[0] for d in duckdb.sql(f"SELECT * FROM read_parquet('{out}/candles/**/*.parquet')").description
    ]
    got = dict(zip(names, row[: len(names)], strict=True))
    for name in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "vwap"):
        assert got[name] == getattr(candle, name), name  # exact: 28 significant digits of vwap too
    assert got["trades"] == 7 and got["interval"] == "1m"
    gaps = duckdb.sql(
        f'SELECT channel, epoch_us(start), epoch_us("end"), reason, recovered, date FROM '
        f"read_parquet('{out}/gaps/**/*.parquet', hive_partitioning = true) ORDER BY start"
    ).fetchall()
    assert [g[:5] for g in gaps] == [
        ("trades", BASE + 5, None, "reconnect", 0),
        ("book", BASE + DAY_US + 9, BASE + DAY_US + 99, "sequence", 3),
    ]


def test_unknown_table_names_the_valid_ones() -> None:
    with pytest.raises(
        ArchiveError,
        match=r"unknown table 'book'; valid tables: trades, candles, derivatives, liquidations, quotes, gaps",
    ):
        parse_tables("trades,book")


async def _prepare_sqlite(path: Path) -> None:
    store = await filled_store(f"sqlite:///{path}", make_trades(days=2, per_day=5))
    await store.close()


def test_cli_export_csv_and_parquet_with_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trio

    db = tmp_path / "var" / "marketflow.db"
    trio.run(_prepare_sqlite, db)
    config = tmp_path / "marketflow.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n')
    args = ["export", "--since", "2026-08-09", "--until", "2026-08-11T00:00:00Z", "--config", str(config)]
    assert main([*args, "--out", str(tmp_path / "pq"), "--symbol", "btc-usdt", "--exchange", "bybit"]) == 0
    out = capsys.readouterr().out
    assert "trades: " in out and "exported " in out and "rows/s" in out
    assert {p.parts[-3] for p in (tmp_path / "pq").rglob("*.parquet")} == {"symbol=BTC-USDT"}
    assert main([*args, "--out", str(tmp_path / "csv"), "--format", "csv", "--tables", "trades,gaps"]) == 0
    first = next((tmp_path / "csv").rglob("data.csv")).read_text().splitlines()
    assert first[0] == '"ts","id","price","amount","side","recv_ts"'
    assert first[1].startswith('"2026-08-09T')
    assert main([*args, "--out", str(tmp_path / "x"), "--tables", "trades,funding"]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'funding'" in err and "derivatives, liquidations, quotes, gaps" in err
    assert main([*args[:3], "--until", "yesterday", "--out", str(tmp_path / "x")]) == 2
    assert "--until must be ISO 8601" in capsys.readouterr().err


class _Terminal(io.StringIO):
    """What a terminal looks like to `Progress`: a stream whose isatty() is true."""

    def isatty(self) -> bool:
        return True


async def test_progress_line_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "REDRAW_S", 0.0)  # draw on every partition
    store = await filled_store(f"sqlite:///{tmp_path}/db.sqlite", make_trades(days=2, per_day=5))
    try:
        terminal, log = _Terminal(), io.StringIO()
        source = source_for(store)
        await export_tables(source, [TRADES], tmp_path / "a", BASE, BASE + 2 * DAY_US, stream=terminal)
        await export_tables(source, [TRADES], tmp_path / "b", BASE, BASE + 2 * DAY_US, stream=log)
    finally:
        await store.close()
    drawn = terminal.getvalue()
    assert "\rexport " in drawn and "/20 rows" in drawn and drawn.endswith("\r")  # erased at the end
    assert log.getvalue() == ""
