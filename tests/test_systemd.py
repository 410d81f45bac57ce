"""sd_notify as systemd sees it: a fake NOTIFY_SOCKET receives READY, WATCHDOG, RELOADING/READY, STOPPING."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from marketflow.sim import SimConfig, SimServer
from marketflow.systemd import Notifier
from tests.conftest import wait_for


class FakeSystemd:
    """A bound unix datagram socket collecting what the service sends, as systemd's would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def kinds(self) -> list[str]:
        return [m.splitlines()[0].split("=")[0] for m in self.drain()]


def test_notifier_is_silent_without_systemd() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled and notifier.ready("x") is False


def test_abstract_socket_and_watchdog_interval(tmp_path: Path) -> None:
    notifier = Notifier(
        env={"NOTIFY_SOCKET": "@mf-test", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.watchdog_interval_s == 2.0
    assert (
        Notifier(
            env={"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
        ).watchdog_interval_s
        is None
    )


async def test_a_wedged_event_loop_stops_the_watchdog(tmp_path: Path) -> None:
    fake = FakeSystemd(tmp_path / "notify")
    notifier = Notifier(env={"NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    healthy = [True]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notifier.watchdog, lambda: healthy[0])
        await trio.sleep(0.5)
        before = fake.kinds().count("WATCHDOG")
        assert before >= 3
        time.sleep(0.5)  # noqa: ASYNC251 - deliberately wedging the event loop: nothing may ping
        assert fake.kinds().count("WATCHDOG") == before
        await trio.sleep(0.3)
        assert fake.kinds().count("WATCHDOG") > before  # alive again
        healthy[0] = False  # unhealthy: no pings either
        await trio.sleep(0.1)
        unhealthy_from = fake.kinds().count("WATCHDOG")
        await trio.sleep(0.4)
        assert fake.kinds().count("WATCHDOG") == unhealthy_from
        nursery.cancel_scope.cancel()


async def test_service_lifecycle_start_reload_stop(tmp_path: Path) -> None:
    fake = FakeSystemd(tmp_path / "notify")
    sim = SimServer(SimConfig(seed=51, rate=20))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = tmp_path / "marketflow.toml"
            config.write_text(
                f'[http]\nlisten = "127.0.0.1:0"\n[daemon]\nstate_dir = "{tmp_path}"\n[storage]\nurl = "sqlite:///{tmp_path}/mf.db"\n'
                f'[[feeds]]\nexchange = "bybit"\nmarket = "linear"\nsymbols = ["BTCUSDT"]\n'
                f'ws_url = "{sim.bybit_ws_url("linear")}"\n'
            )
            env = {
                **os.environ,
                "NOTIFY_SOCKET": str(fake.path),
                "WATCHDOG_USEC": "200000",
                "MARKETFLOW_STORAGE_URL": "",
            }
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "marketflow", "run", "--config", str(config)],
                env=env,
                stderr=subprocess.DEVNULL,
            )
            await wait_for(lambda: "READY" in fake.kinds(), 0.05)
            await wait_for(lambda: fake.kinds().count("WATCHDOG") >= 2, 0.05)
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: "RELOADING" in fake.kinds(), 0.05)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
    kinds = [k for k in fake.kinds() if k in ("READY", "RELOADING", "STOPPING")]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"]
    ready = next(m for m in fake.messages if m.startswith("READY=1"))
    assert "STATUS=" in ready and "connections streaming" in ready
    first_watchdog = next(i for i, m in enumerate(fake.messages) if m.startswith("WATCHDOG"))
    assert first_watchdog > 0 and fake.messages[0].startswith("READY=1")


def test_the_shipped_unit_is_a_hardened_notify_service(tmp_path: Path) -> None:
    unit = (Path(__file__).parent.parent / "configs" / "marketflow.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    required = {
        "Type": "notify",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "marketflow",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
    }
    assert {k: settings.get(k) for k in required} == required
    assert int(settings["WatchdogSec"]) > 0
    assert int(settings["LimitNOFILE"]) >= 4096  # room for http.max_connections and the rest
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # where systemd's tools exist, the unit must also pass its own checker
        result = subprocess.run(
            [analyze, "verify", str(Path("configs/marketflow.service").resolve())],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        problems = [line for line in result.stderr.splitlines() if "is not executable" not in line]
        assert problems == []
