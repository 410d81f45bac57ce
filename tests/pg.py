"""The test suite's PostgreSQL server: `marketflow.bench.pgcluster` (a throwaway cluster from the Debian
server binaries; as root it runs as the `postgres` system user), shared by the storage and end-to-end tests.
"""

from __future__ import annotations

import atexit

from marketflow.bench.pgcluster import (
    PG_BIN_GLOB,
    SERVER_USER,
    PgCluster,
    PgClusterError,
    find_bin_dir,
    free_port,
    start_cluster,
)

__all__ = [
    "PG_BIN_GLOB",
    "SERVER_USER",
    "PgCluster",
    "PgClusterError",
    "find_bin_dir",
    "free_port",
    "shared_cluster",
    "start_cluster",
]

# -- one server per test process, shared by the storage tests and the end-to-end tests ------------------

_shared: PgCluster | None = None


def shared_cluster() -> PgCluster:
    """The session's server, started on first use and removed when the process exits.

    Missing binaries raise PgClusterError: a clear error, never a skip, because CI must prove PostgreSQL.
    """
    global _shared
    if _shared is None:
        _shared = start_cluster()
        atexit.register(_shared.destroy)
    elif not _shared.is_running():  # a test that stopped it failed before starting it again
        _shared.start()
    return _shared
