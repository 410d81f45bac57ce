"""The columnar archive (SPEC §14): `marketflow export`, the archiving job and reads of archived days.

- `tables.py`: the exportable tables as data (columns, kinds, partition time, key);
- `db.py`: partitions and rows out of SQLite or PostgreSQL, and the archived trades' delete;
- `files.py`: one Parquet/CSV file per hive partition, written atomically, merged, read back exactly;
- `export.py`: the `export` command; `mover.py`: the `[archive] after_days` job;
- `reader.py`: archived days and the database as one store for the query layer (DuckDB).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketflow.archive.tables import TABLES, ArchiveError
from marketflow.config import Config

if TYPE_CHECKING:
    from marketflow.archive.mover import Archiver
    from marketflow.archive.reader import TradeArchive

# pyarrow and DuckDB (~60 MB resident) load with `mover`/`reader`, so only a daemon that archives, or
# reads an archive, pays for them: the names below are imported on first use.
_LAZY = {"Archiver": "mover", "TradeArchive": "reader", "reads_for": "reader"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Archiver",
    "TABLES",
    "ArchiveError",
    "TradeArchive",
    "archive_root",
    "make_archiver",
    "open_archive",
    "reads_for",
]


def archive_root(config: Config) -> Path:
    """`[archive] dir`, else `<daemon.state_dir>/archive`."""
    return Path(config.archive.dir or os.path.join(config.daemon.state_dir, "archive"))


def open_archive(config: Config) -> TradeArchive | None:
    """The archive queries read, when archiving is on or the directory holds trades from an earlier run."""
    root = archive_root(config)
    if config.archive.after_days > 0 or (root / "trades").is_dir():
        from marketflow.archive.reader import TradeArchive

        return TradeArchive(root)
    return None


def make_archiver(config: Config, store: object) -> Archiver:
    """A fresh archiving job actor for the daemon's child table."""
    from marketflow.archive.mover import Archiver

    return Archiver(store, archive_root(config), config.archive.after_days)
