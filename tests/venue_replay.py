"""What the per-venue capture/replay tests share: a quick daemon config around the venue's feeds and the
rows to compare between the live run and its replay."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import attrs

from marketflow.config import Config, FeedConfig, default_config

TRADES = "SELECT exchange, symbol, id, price, amount, side, ts FROM trades"


def replay_test_config(tmp: Path, db: str, feeds: Sequence[FeedConfig], *, capture: bool) -> Config:
    """SQLite in `tmp`, fast flushes and restarts, HTTP on any port; capture on for the live run."""
    base = default_config(env={})
    return attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp), shutdown_timeout_s=5.0),
        http=attrs.evolve(base.http, listen="127.0.0.1:0"),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp}/{db}", flush_interval_s=0.05),
        supervisor=attrs.evolve(base.supervisor, backoff_initial_s=0.05, backoff_max_s=0.2),
        capture=attrs.evolve(base.capture, enabled=capture),
        feeds=tuple(feeds),
    )


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


def checksum_book_gaps(db: Path) -> list[tuple[str, str]]:
    """(symbol, "checksum") of every book gap a checksum mismatch opened."""
    found = rows(db, "SELECT symbol, reason FROM gaps WHERE channel = 'book' AND reason LIKE 'checksum%'")
    return sorted((str(symbol), str(reason).split(" is not")[0][:8]) for symbol, reason in found)
