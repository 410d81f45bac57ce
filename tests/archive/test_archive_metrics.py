"""The archiving job in `/metrics`: passes, failures, rows, files and bytes, and when it last succeeded."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from marketflow.api.metrics import make_registry, render
from marketflow.api.queries import QueryContext
from marketflow.archive.mover import Archiver
from marketflow.config import parse_config
from marketflow.daemon import Daemon
from tests.archive.helpers import filled_store, make_trades
from tests.archive.test_mover import NOW, older


def archive_metrics(daemon: Daemon) -> dict[str, float]:
    text = render(make_registry(QueryContext(daemon))).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("marketflow_archive_")
    }


async def test_archive_metrics_count_passes_rows_files_and_failures(tmp_path: Path) -> None:
    trades = make_trades()
    store = await filled_store(f"sqlite:///{tmp_path}/store.db", trades)
    daemon = Daemon(parse_config(f'[daemon]\nstate_dir = "{tmp_path}"\n', env={}))
    assert archive_metrics(daemon) == {}  # no archiving job: no archive metrics
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the archive directory should be")
    try:
        failing = Archiver(store, blocked / "archive", 1, clock=lambda: NOW)
        daemon.actors["archive"] = failing
        assert (await failing.run_once()).failed == 8
        got = archive_metrics(daemon)
        assert got["marketflow_archive_failing"] == 1
        assert (got["marketflow_archive_runs_total"], got["marketflow_archive_failed_runs_total"]) == (1, 1)
        assert got["marketflow_archive_errors_total"] == 8 and got["marketflow_archive_rows_total"] == 0
        assert got["marketflow_archive_last_run_timestamp_seconds"] == NOW / 1e6
        assert "marketflow_archive_last_success_timestamp_seconds" not in got

        root = tmp_path / "archive"
        archiver = Archiver(store, root, 1, clock=lambda: NOW)
        daemon.actors["archive"] = archiver
        await archiver.run_once()
        await archiver.run_once()  # nothing left: a pass that writes nothing
        got = archive_metrics(daemon)
    finally:
        await store.close()
    written = sorted(root.rglob("*.parquet"))
    assert got["marketflow_archive_failing"] == 0
    assert (got["marketflow_archive_runs_total"], got["marketflow_archive_failed_runs_total"]) == (2, 0)
    assert got["marketflow_archive_partitions_total"] == 8 == len(written)
    assert got["marketflow_archive_rows_total"] == len(older(trades, 2))
    assert got["marketflow_archive_files_written_total"] == 8
    assert got["marketflow_archive_bytes_written_total"] == sum(p.stat().st_size for p in written)
    assert got["marketflow_archive_last_success_timestamp_seconds"] == NOW / 1e6
