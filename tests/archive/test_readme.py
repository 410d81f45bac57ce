"""The README's three archive examples (DuckDB, polars, pyarrow) run against a real archive."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from marketflow.archive.mover import Archiver
from tests.archive.helpers import BASE, DAY_US, filled_store, make_trades

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- archive-example -->\n```python\n(.*?)```", re.DOTALL)


def examples() -> list[str]:
    return EXAMPLE.findall(README.read_text())


def test_the_readme_has_the_three_examples() -> None:
    found = examples()
    assert [("duckdb" in e, "polars" in e, "pyarrow" in e) for e in found] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]


async def _archive(state: Path) -> int:
    trades = make_trades(days=3, per_day=20)
    store = await filled_store(f"sqlite:///{state}/marketflow.db", trades)
    try:
        result = await Archiver(store, state / "archive", 1, clock=lambda: BASE + 3 * DAY_US).run_once()
    finally:
        await store.close()
    return sum(1 for t in trades if t.symbol == "BTC-USDT" and t.ts < BASE + 2 * DAY_US) if result else 0


@pytest.mark.parametrize("index", [0, 1, 2], ids=["duckdb", "polars", "pyarrow"])
def test_readme_archive_example_runs(tmp_path: Path, index: int) -> None:
    (tmp_path / "var").mkdir()
    btc_rows = trio.run(_archive, tmp_path / "var")
    done = subprocess.run(
        [sys.executable, "-c", examples()[index]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    if index == 0:
        assert out.startswith("20 (") and "Decimal('" in out  # day 0 of BTC-USDT: 20 trades
    elif index == 1:
        assert "buy" in out and "sell" in out and "decimal[38,18]" in out
    else:
        assert out.strip() == f"{btc_rows} decimal128(38, 18)"
