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

from marketflow.archive.mover import Archiver
from marketflow.archive.reader import TradeArchive, reads_for
from marketflow.archive.tables import TABLES, ArchiveError
from marketflow.config import Config

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
        return TradeArchive(root)
    return None


def make_archiver(config: Config, store: object) -> Archiver:
    """A fresh archiving job actor for the daemon's child table."""
    return Archiver(store, archive_root(config), config.archive.after_days)
