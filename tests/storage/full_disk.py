"""A real full disk for the spool tests: a small tmpfs where root may mount one, else RLIMIT_FSIZE in a child.

Both give the spool real short writes and then real errors from the kernel: ENOSPC from a tmpfs with
`capacity` bytes left, EFBIG from a file size limit of `capacity` bytes (SIGXFSZ ignored, as a daemon
under `LimitFSIZE=` would have to). `make_room()` ends the shortage: the tmpfs filler file is deleted, or
the soft limit is raised to the hard one.

A scenario is `async def scenario(spool_dir, work_dir, make_room)` in a test module; `run_full_disk()` runs
it in this process on a tmpfs, or in a child process (`python -m tests.storage.full_disk`) under the limit,
where a failed assertion fails the child and its traceback becomes the test's failure message.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

Scenario = Callable[[Path, Path, Callable[[], None]], Awaitable[None]]

PAGE = 4096
TMPFS_SIZE = 64 * 1024
REPO = Path(__file__).resolve().parents[2]


@functools.cache
def tmpfs_mountable() -> bool:
    """Whether this process may mount a tmpfs (root, outside a restricted container)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as probe:
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", probe], capture_output=True
        ).returncode:
            return False
        subprocess.run(["umount", probe], check=True)
    return True


@contextlib.contextmanager
def small_tmpfs(where: Path, capacity: int) -> Iterator[tuple[Path, Callable[[], None]]]:
    """Mounts a 64 KiB tmpfs at `where` with `capacity` bytes (whole pages) left; yields `where` and the
    function that frees it."""
    assert capacity % PAGE == 0 and capacity < TMPFS_SIZE
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(where)], check=True)
    try:
        filler = where / "filler"
        filler.write_bytes(b"\0" * (TMPFS_SIZE - capacity))
        free = os.statvfs(where)
        assert free.f_bavail * free.f_frsize == capacity, "the tmpfs does not account as expected"
        yield where, lambda: filler.unlink()
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def run_full_disk(kind: str, scenario: Scenario, tmp_path: Path, capacity: int) -> None:
    """Run `scenario` (a module-level function of a test module) against a disk with `capacity` bytes."""
    work = tmp_path / "work"
    work.mkdir()
    if kind == "tmpfs":
        with small_tmpfs(tmp_path / "disk", capacity) as (disk, make_room):
            trio.run(scenario, disk / "spool", work, make_room)
        return
    assert kind == "rlimit"
    target = f"{scenario.__module__}:{scenario.__qualname__}"
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.storage.full_disk",
            target,
            str(tmp_path / "spool"),
            str(work),
            str(capacity),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, f"the scenario failed in the child:\n{child.stderr[-6000:]}"


def _child(target: str, spool_dir: str, work: str, capacity: str) -> None:
    module, _, name = target.partition(":")
    scenario: Scenario = getattr(importlib.import_module(module), name)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG

    def make_room() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))

    resource.setrlimit(resource.RLIMIT_FSIZE, (int(capacity), hard))
    trio.run(scenario, Path(spool_dir), Path(work), make_room)


if __name__ == "__main__":
    _child(*sys.argv[1:])
