"""Analytics fixtures: a fresh database of each engine (PostgreSQL: the suite's server, `tests/pg.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import shared_cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return shared_cluster().create_database()
