"""Measuring `marketflow bench`'s child processes: CPU and RSS from /proc, their JSON-lines stdout read on
a thread, latency percentiles, and stopping them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(samples_us: Sequence[float]) -> dict[str, float | int | None]:
    ms = [s / 1000 for s in samples_us]
    return {
        "samples": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


class JsonLines:
    """A child process's JSON-lines stdout, read on a thread: the latest progress line and events."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.latest: dict[str, Any] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                event = record.get("event")
                if event in ("error", "warning"):
                    self.errors.append(str(record.get("text") or record))
                elif event:
                    self.events[event] = record
                if event in (None, "final"):
                    self.latest = record
                self._cond.notify_all()
        with self._cond:
            self.events.setdefault("exit", {})
            self._cond.notify_all()

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: name in self.events or "exit" in self.events, timeout)
            return self.events.get(name)


def stop_process(proc: subprocess.Popen[str], grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
