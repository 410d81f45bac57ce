"""systemd integration: sd_notify readiness, reload and stop notices, status lines and the watchdog.

Speaks the notify protocol directly (a datagram to `$NOTIFY_SOCKET`; a leading `@` is the abstract
namespace), so it needs no library and does nothing when not started by systemd. The watchdog pings come
from a trio task: if the event loop wedges they stop, and systemd restarts the service; they also stop
while the daemon reports itself unhealthy.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger("marketflow.systemd")


class Notifier:
    """Sends sd_notify messages; a no-op without `NOTIFY_SOCKET`."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.watchdog_interval_s = _watchdog_interval(env)
        self.sent: int = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message (several `KEY=value` lines); False when not under systemd or it failed."""
        if self._address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc)})
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        monotonic_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_us}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def watchdog(self, healthy: Callable[[], bool], status: Callable[[], str] | None = None) -> None:
        """Ping `WATCHDOG=1` at half the systemd interval while `healthy()`; refresh STATUS= each time."""
        interval = self.watchdog_interval_s
        if interval is None or not self.enabled:
            if status is None or not self.enabled:
                await trio.sleep_forever()
            interval = 10.0
        while True:
            await trio.sleep(interval)
            if self.watchdog_interval_s is not None and healthy():
                self.notify("WATCHDOG=1")
            if status is not None:
                self.status(status())


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of `WATCHDOG_USEC`, if it is meant for this process (`WATCHDOG_PID` absent or ours)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.01)
    except ValueError:
        return None
