"""A throwaway PostgreSQL cluster from the Debian server binaries, for tests and benchmarks.

`initdb` into a fresh temporary directory, start on a free 127.0.0.1 port (Unix socket in that directory
too), create databases, stop and start again (the outage tests really stop the server process), and remove
everything at the end. PostgreSQL refuses to run as root, so as root every server command runs as the
`postgres` system user through `runuser`, and the directory is handed to that user.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"


class PgClusterError(RuntimeError):
    """The cluster could not be set up or controlled; the message says what to install or fix."""


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian's layout), or `$PG_BIN_DIR`."""
    if os.environ.get("PG_BIN_DIR"):
        return Path(os.environ["PG_BIN_DIR"])
    candidates = [Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "postgres").exists()]
    if not candidates:
        raise PgClusterError(
            f"no PostgreSQL server binaries under {PG_BIN_GLOB} (and $PG_BIN_DIR is not set): the storage "
            "tests need a real server. Install Debian's `postgresql` package (scripts/test does this)."
        )
    return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One server: `init()` once, then `start()` / `stop()` as often as a test needs."""

    def __init__(self, *, durable: bool = False, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="marketflow-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PgClusterError(
                    f"running as root, but there is no {SERVER_USER!r} system user to run PostgreSQL as "
                    "(PostgreSQL refuses root); install Debian's `postgresql` package, which creates it"
                ) from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o700)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, check=False)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgClusterError(
                f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )
        return result

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100"
        if not self.durable:  # tests never crash the server, so its own durability only costs time
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        """Stop the server process now: `-m fast` disconnects every client and shuts down cleanly."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        cmd = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        auth = self.user if password is None else f"{self.user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL through psql (unaligned, tuples only) and return its output."""
        return self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ).stdout

    def destroy(self) -> None:
        try:
            if self.is_running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> PgCluster:
    cluster = PgCluster(durable=durable)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


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
