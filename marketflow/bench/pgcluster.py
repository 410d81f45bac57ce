"""A throwaway PostgreSQL cluster from the Debian server binaries, for benchmarks and tests.

`initdb` into a fresh temporary directory, start on a free 127.0.0.1 port (Unix socket in that directory
too), create databases, stop and start again (the outage tests really stop the server process), and remove
everything at the end. PostgreSQL refuses to run as root, so as root every server command runs as the
`postgres` system user through `runuser`, and the directory is handed to that user.

    with throwaway_cluster() as cluster:
        dsn = cluster.create_database("bench")
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import attrs

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"


class PgClusterError(RuntimeError):
    """The cluster could not be set up or controlled; the message says what to install or fix."""


@attrs.frozen
class PgDsn:
    """Where one database of a cluster is: the parts a client library's `connect()` takes."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = None

    @property
    def url(self) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.database}"


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian's layout), or `$PG_BIN_DIR`."""
    if os.environ.get("PG_BIN_DIR"):
        return Path(os.environ["PG_BIN_DIR"])
    candidates = [Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "postgres").exists()]
    if not candidates:
        raise PgClusterError(
            f"no PostgreSQL server binaries under {PG_BIN_GLOB} (and $PG_BIN_DIR is not set): a real server "
            "is needed. Install Debian's `postgresql` package (scripts/test does this)."
        )
    return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def have_server_binaries() -> bool:
    """Whether `find_bin_dir()` would find a server."""
    try:
        find_bin_dir()
    except PgClusterError:
        return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One server: `init()` once, then `start()` / `stop()` as often as needed; `destroy()` at the end.

    As a context manager it is initialised and started on entry and destroyed on exit.
    """

    def __init__(self, *, durable: bool = False, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="marketflow-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise PgClusterError(
                    f"running as root, but there is no {SERVER_USER!r} system user to run PostgreSQL as "
                    "(PostgreSQL refuses root); install Debian's `postgresql` package, which creates it"
                ) from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o700)

    def __enter__(self) -> PgCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

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
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c max_connections=100"
        if not self.durable:  # a throwaway cluster never needs to survive a crash: durability only costs
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        """Stop the server process now: `-m fast` disconnects every client and shuts down cleanly."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        if not self.data.exists():
            return False
        cmd = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0

    def dsn(self, database: str = "postgres", *, password: str | None = None) -> PgDsn:
        return PgDsn(self.host, self.port, self.user, database, password)

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        return self.dsn(database, password=password).url

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL (`dsn(name)` has the parts)."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL through psql (unaligned, tuples only) and return its output."""
        return self._run(
            "psql",
            "-h",
            self.host,
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

    def is_ready(self) -> bool:
        """Whether the server accepts connections (`pg_isready`)."""
        cmd = [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", self.user]
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0

    def destroy(self) -> None:
        try:
            if self.is_running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> PgCluster:
    """A new cluster, initialised and started; the caller calls `destroy()`."""
    return PgCluster(durable=durable).__enter__()


@contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[PgCluster]:
    """A started cluster for the `with` block, stopped and removed afterwards."""
    with PgCluster(durable=durable) as cluster:
        yield cluster
