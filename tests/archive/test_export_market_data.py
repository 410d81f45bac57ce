"""`marketflow export --tables derivatives,liquidations,quotes`: the SPEC §12 tables as exact,
hive-partitioned Parquet that DuckDB, polars and pyarrow read as they are, on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from marketflow.archive import db
from marketflow.archive.db import source_for
from marketflow.archive.export import export_tables
from marketflow.archive.tables import parse_tables
from marketflow.cli import main
from marketflow.model import DerivativesTick, Liquidation, Ticker
from tests.archive.helpers import BASE, DAY_US, filled_store


def _spelled(value: Decimal | None, scale: int | None) -> str | None:
    if value is None or scale is None:
        return None
    return format(value.quantize(Decimal(1).scaleb(-scale)), "f")


def _derivatives() -> list[DerivativesTick]:
    """Six samples over two days, two symbols, with nulls (fields a venue did not send) and spellings
    whose trailing zeros must survive."""
    out = []
    for i in range(6):
        ts = BASE + (i // 3) * DAY_US + i * 1_000_003
        out.append(
            DerivativesTick(
                "bybit",
                "BTC-USDT-PERP" if i % 2 else "ETH-USDT-PERP",
                ts,
                ts + 17,
                mark_price=Decimal(("65114.20", "65114.2", "3100.00")[i % 3]),
                index_price=None if i == 4 else Decimal("65110.5"),
                funding_rate=Decimal(("0.00010000", "-0.0000125", "0")[i % 3]),
                next_funding_time=None if i == 1 else BASE + 8 * 3_600_000_000,
                open_interest=Decimal("123456.789000"),
                open_interest_value=None if i % 3 == 2 else Decimal("8038765432.10"),
            )
        )
    return out


def _liquidations() -> list[Liquidation]:
    """Five forced orders, three at the same µs (ids of different lengths decide their order)."""
    out = []
    for i, id_ in enumerate(("9", "10", "100", "2", "abc")):
        ts = BASE + (0 if i < 3 else DAY_US + i)
        out.append(
            Liquidation(
                "binance",
                "BTC-USDT-PERP",
                id_,
                "sell" if i % 2 else "buy",
                Decimal(("65114.20", "65114.2", "0.00062000", "65100", "1.5")[i]),
                Decimal(("0.001", "1.50", "2", "0.000000000000000001", "12.0")[i]),
                ts,
                ts + 5,
            )
        )
    return out


def _expected_derivatives(rows: list[DerivativesTick]) -> list[tuple[object, ...]]:
    def text(v: Decimal | None) -> str | None:
        return None if v is None else format(v, "f")

    return sorted(
        (
            r.exchange,
            r.symbol,
            r.ts,
            text(r.mark_price),
            text(r.index_price),
            text(r.funding_rate),
            r.next_funding_time,
            text(r.open_interest),
            text(r.open_interest_value),
        )
        for r in rows
    )


async def test_derivatives_and_liquidations_export_exactly(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "READ_CHUNK", 2)  # several keyset pages per partition, for both key shapes
    derivatives, liquidations = _derivatives(), _liquidations()
    store = await filled_store(store_url, [])
    try:
        await store.write_derivatives(derivatives)  # type: ignore[attr-defined]
        await store.write_liquidations(liquidations)  # type: ignore[attr-defined]
        out = tmp_path / "out"
        tables = parse_tables("derivatives,liquidations")
        summary = await export_tables(source_for(store), tables, out, BASE, BASE + 2 * DAY_US)
        again = await export_tables(source_for(store), tables, out, BASE, BASE + 2 * DAY_US)
    finally:
        await store.close()
    assert summary.tables["derivatives"].rows == 6 and summary.tables["derivatives"].partitions == 4
    assert summary.tables["liquidations"].rows == 5 and summary.tables["liquidations"].partitions == 2
    assert again.tables["liquidations"].rows == 5  # merged into the same files, not doubled
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert "liquidations/exchange=binance/symbol=BTC-USDT-PERP/date=2026-08-09/data.parquet" in files
    assert "derivatives/exchange=bybit/symbol=ETH-USDT-PERP/date=2026-08-10/data.parquet" in files
    assert len(files) == 6

    fields = ("mark_price", "index_price", "funding_rate", "open_interest", "open_interest_value")
    spelled = ", ".join(f"{f}, {f}_scale" for f in fields)
    got = duckdb.sql(
        f"SELECT exchange, symbol, epoch_us(ts), {spelled}, epoch_us(next_funding_ts) "
        f"FROM read_parquet('{out}/derivatives/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    rows = sorted(
        (r[0], r[1], r[2], *(_spelled(r[3 + 2 * i], r[4 + 2 * i]) for i in range(3)), r[13])
        + tuple(_spelled(r[3 + 2 * i], r[4 + 2 * i]) for i in range(3, 5))
        for r in got
    )
    assert rows == _expected_derivatives(derivatives)

    table = ds.dataset(out / "liquidations", format="parquet", partitioning="hive").to_table()
    assert str(table.schema.field("price").type) == "decimal128(38, 18)"
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    liq = sorted(
        (r["id"], r["side"], _spelled(r["price"], r["price_scale"]), _spelled(r["amount"], r["amount_scale"]))
        for r in table.to_pylist()
    )
    assert liq == sorted((x.id, x.side, format(x.price, "f"), format(x.amount, "f")) for x in liquidations)
    # each file in key order: (ts, id) with ids compared by code point
    day0 = duckdb.sql(
        f"SELECT id FROM read_parquet('{out}/liquidations/exchange=binance/symbol=BTC-USDT-PERP/"
        "date=2026-08-09/data.parquet')"
    ).fetchall()
    assert [r[0] for r in day0] == ["10", "100", "9"]

    frame = pl.scan_parquet(f"{out}/liquidations/**/*.parquet", hive_partitioning=True)
    total = frame.select(pl.col("amount").sum()).collect().item()
    assert total == sum(x.amount for x in liquidations)  # Decimal(38, 18): exact


async def _prepare(path: Path) -> None:
    store = await filled_store(f"sqlite:///{path}", [])
    await store.write_liquidations(_liquidations())  # type: ignore[attr-defined]
    await store.close()


def test_cli_exports_liquidations_as_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trio

    trio.run(_prepare, tmp_path / "var" / "marketflow.db")
    config = tmp_path / "marketflow.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n')
    args = ["export", "--since", "2026-08-09", "--until", "2026-08-11", "--config", str(config)]
    assert main([*args, "--out", str(tmp_path / "csv"), "--format", "csv", "--tables", "liquidations"]) == 0
    assert "liquidations: 5 rows in 2 partition file(s)" in capsys.readouterr().out
    day0 = next((tmp_path / "csv").rglob("date=2026-08-09/data.csv")).read_text().splitlines()
    assert day0[0] == '"ts","id","side","price","amount","recv_ts"'
    assert day0[1].split(",") == [
        '"2026-08-09T00:00:00.000000Z"',
        '"10"',
        '"sell"',
        '"65114.2"',
        '"1.50"',
        '"2026-08-09T00:00:00.000005Z"',
    ]


def _quotes() -> list[Ticker]:
    """Best bid/ask changes, three of them in one µs (a page of two cuts that instant), one side missing."""
    rows = []
    for i, (bid, ask) in enumerate(
        (("65114.20", "65114.30"), ("65114.2", "65114.4"), ("65114.10", None), ("65114.00", "65114.5"))
    ):
        ts = BASE + (0 if i < 3 else 7)
        rows.append(
            Ticker(
                "bybit",
                "BTC-USDT",
                ts,
                ts + 3,
                bid=Decimal(bid),
                bid_size=Decimal("1.50"),
                ask=None if ask is None else Decimal(ask),
                ask_size=None if ask is None else Decimal("0.00062000"),
            )
        )
    late = Ticker(
        "bybit", "BTC-USDT", BASE + DAY_US + 1, BASE + DAY_US + 2, bid=Decimal("1"), bid_size=Decimal("2")
    )
    return [*rows, late]


def _quote_text(q: Ticker) -> tuple[object, ...]:
    def text(v: Decimal | None) -> str | None:
        return None if v is None else format(v, "f")

    return (q.ts, text(q.bid), text(q.bid_size), text(q.ask), text(q.ask_size))


async def test_quotes_export_every_change_once(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "READ_CHUNK", 2)  # the first page ends inside the three rows of one µs
    quotes = _quotes()
    store = await filled_store(store_url, [])
    try:
        await store.write_quotes(quotes)  # type: ignore[attr-defined]
        out = tmp_path / "out"
        source, tables = source_for(store), parse_tables("quotes")
        summary = await export_tables(source, tables, out, BASE, BASE + 2 * DAY_US)
        again = await export_tables(source, tables, out, BASE, BASE + 2 * DAY_US)  # merged: no doubles
    finally:
        await store.close()
    assert summary.tables["quotes"].rows == again.tables["quotes"].rows == 5
    assert summary.tables["quotes"].partitions == 2
    fields = ("bid", "bid_size", "ask", "ask_size")
    got = duckdb.sql(
        f"SELECT epoch_us(ts), {', '.join(f'{f}, {f}_scale' for f in fields)} "
        f"FROM read_parquet('{out}/quotes/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    rows = sorted((r[0], *(_spelled(r[1 + 2 * i], r[2 + 2 * i]) for i in range(4))) for r in got)
    assert rows == sorted(_quote_text(q) for q in quotes)
