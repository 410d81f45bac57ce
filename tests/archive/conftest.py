"""Archive fixtures: a fresh database of each engine (the storage tests' PostgreSQL cluster)."""

from __future__ import annotations

from tests.storage.conftest import pg_cluster, pg_url, store_url

__all__ = ["pg_cluster", "pg_url", "store_url"]
