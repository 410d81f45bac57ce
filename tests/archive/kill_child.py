"""A child process for the SIGKILL tests: runs one archiving pass and kills itself with SIGKILL when the
job reaches a named step for the n-th time:

    python -m tests.archive.kill_child URL ROOT NOW STEP N [DELETE_KEYS]
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import trio

from marketflow.archive import mover
from marketflow.archive.mover import Archiver
from marketflow.storage import open_store


async def _main(url: str, root: str, now: int, step: str, nth: int) -> None:
    store = open_store(url)
    await store.open()
    seen = 0

    def maybe_die(name: str) -> None:
        nonlocal seen
        if name == step:
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    archiver = Archiver(store, Path(root), 1, clock=lambda: now, step=maybe_die)
    result = await archiver.run_once()
    print(f"done {result.partitions} {result.trades} {result.failed}", flush=True)
    await store.close()


if __name__ == "__main__":
    url, root, now, step, nth = sys.argv[1:6]
    if len(sys.argv) > 6:  # keys deleted per slice, so a kill can fall between two slices
        mover.DELETE_KEYS = int(sys.argv[6])
    trio.run(_main, url, root, int(now), step, int(nth))
