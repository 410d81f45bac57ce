"""A really read-only folder for tests: a read-only bind mount as root (EROFS, as under systemd's
`ProtectSystem=strict`), mode 0555 otherwise (EACCES, as for the container's root-owned /etc/marketflow)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` unwritable for this process while the block runs; skip the test where that cannot be
    done for real (root without CAP_SYS_ADMIN: a chmod would not stop root)."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode & 0o777
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    mounted = subprocess.run(
        ["mount", "-o", "bind,ro", str(folder), str(folder)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount {folder} read-only here: {mounted.stderr.strip()}")
    try:
        probe = folder / ".probe"
        with pytest.raises(OSError):  # the mount really is read-only (mount(8) remounts binds ro itself)
            probe.write_text("x")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)
