"""Storage fixtures: the real PostgreSQL server (`tests/pg.py`) and a fresh database of each engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import PgCluster, shared_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return shared_cluster()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh empty database (the server is started again if an outage test left it stopped)."""
    return shared_cluster().create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("pg_url"))
