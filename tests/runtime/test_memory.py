"""Freed heap pages go back to the system (glibc's malloc_trim), once a minute in the daemon."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from marketflow.daemon import Daemon
from marketflow.runtime import memory
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config, wait_for

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_release_returns_free_heap_pages_that_free_alone_keeps() -> None:
    # In a fresh process: 100k buffers of 1 KiB (glibc's heap, not pymalloc, not mmap), all freed but the
    # last, which pins the top of the heap so free() cannot shrink it. The pages stay in RSS until
    # release_free_memory() hands them back.
    script = textwrap.dedent(
        """
        import sys
        from marketflow.runtime import memory

        def rss_kib():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

        buffers = [bytearray(1024) for _ in range(100_000)]
        pin = bytearray(1024)
        del buffers
        freed = rss_kib()
        assert memory.release_free_memory() is True
        print(freed, rss_kib())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    freed, released = map(int, done.stdout.split())
    assert freed - released > 50_000, (freed, released)  # KiB: most of the ~100 MiB freed


async def test_the_trimmer_runs_once_a_minute_and_counts_what_it_gave_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    trimmer = memory.HeapTrimmer()
    with trio.move_on_after(memory.TRIM_INTERVAL_S * 3 + 1):
        await trimmer.run()
    assert trimmer.trims == (3 if trimmer.available else 0)
    assert trimmer.released_bytes >= 0


async def test_without_malloc_trim_the_trimmer_returns_at_once(autojump_clock: trio.abc.Clock) -> None:
    trimmer = memory.HeapTrimmer(available=False)
    with trio.fail_after(1):
        await trimmer.run()
    assert trimmer.trims == 0 and trio.current_time() == 0


def test_rss_is_read() -> None:
    assert memory.rss_bytes() > 1_000_000 or platform.system() != "Linux"


async def test_the_daemon_trims_while_it_runs_and_stops_the_trimmer_with_its_actors(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=7, rate=20))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        daemon = Daemon(sim_config(tmp_path, sim, markets=("spot",)))
        daemon.heap.interval_s = 0.05  # real time here: the writer's thread and autojump do not mix
        await nursery.start(daemon.run)
        with trio.fail_after(30):
            await wait_for(lambda: not daemon.heap.available or daemon.heap.trims >= 3)
            await daemon.stop()  # run() returns: the trimmer ended with the actors
        trims = daemon.heap.trims
        await trio.sleep(0.2)
        assert daemon.heap.trims == trims
        nursery.cancel_scope.cancel()
