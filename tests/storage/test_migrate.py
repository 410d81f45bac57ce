"""Versioned migrations on both engines: first start initialises, anything else but current is refused."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from marketflow.model import Trade
from marketflow.runtime.backoff import Backoff
from marketflow.runtime.bus import Bus, Overflow
from marketflow.storage import open_store
from marketflow.storage.migrate import (
    add_db_arguments,
    alembic_config,
    ensure_hypertable,
    head_revision,
    known_revisions,
    prepare,
    run_db_command,
    schema_status,
    with_connection,
)
from marketflow.storage.schema import metadata
from marketflow.storage.spool import Spool
from marketflow.storage.writer import SchemaVersionError, StorageWriter
from tests.pg import PgCluster
from tests.storage.helpers import trades, wait_real

UPGRADE_HINT = "run `marketflow db upgrade`"


def db(*argv: str) -> int:
    """`marketflow db ...` exactly as the CLI wires it: a `db` sub-command given add_db_arguments."""
    parser = argparse.ArgumentParser(prog="marketflow")
    sub = parser.add_subparsers(dest="command", required=True)
    add_db_arguments(sub.add_parser("db"))
    return run_db_command(parser.parse_args(["db", *argv]))


def downgrade_to(url: str, revision: str) -> None:
    def go(connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
        connection.commit()

    with_connection(url, go)


def execute(url: str, sql: str) -> None:
    def go(connection: sa.Connection) -> None:
        connection.execute(sa.text(sql))
        connection.commit()

    with_connection(url, go)


async def test_first_start_initialises_exactly_the_schema_of_schema_py(store_url: str) -> None:
    assert schema_status(store_url).state == "empty"
    store = open_store(store_url)
    await store.open()  # what the daemon does: an empty database is created at the newest revision
    await store.close()
    status = schema_status(store_url)
    assert (status.state, status.current, status.head) == ("current", head_revision(), head_revision())
    assert known_revisions() == ["0001", "0002", "0003"]

    def differences(connection: sa.Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    assert with_connection(store_url, differences) == []


async def test_an_older_schema_is_refused_until_db_upgrade(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(store_url)
    downgrade_to(store_url, "0001")
    store = open_store(store_url)
    with pytest.raises(
        SchemaVersionError, match="schema revision 0001, older than this marketflow's 0003"
    ) as e:
        await store.open()
    assert UPGRADE_HINT in str(e.value)
    assert db("check", "--url", store_url) == 1
    assert UPGRADE_HINT in capsys.readouterr().err
    assert db("upgrade", "--url", store_url) == 0
    assert "schema upgraded 0001 -> 0003" in capsys.readouterr().out
    assert db("check", "--url", store_url) == 0
    await store.open()
    await store.close()


async def test_a_newer_schema_is_a_clear_error(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    prepare(store_url)
    execute(store_url, "UPDATE alembic_version SET version_num = '0099'")
    store = open_store(store_url)
    with pytest.raises(SchemaVersionError, match="revision 0099, newer than this marketflow knows"):
        await store.open()
    assert db("upgrade", "--url", store_url) == 1
    assert "upgraded by a newer marketflow" in capsys.readouterr().err
    assert schema_status(store_url).current == "0099"  # untouched


async def test_an_unversioned_database_from_0_1_is_stamped_and_upgraded_keeping_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    store = open_store(url)
    await store.open()
    await store.write_trades(trades(0, 5))
    await store.close()
    downgrade_to(url, "0001")
    execute(url, "DROP TABLE alembic_version")  # what marketflow 0.1's create_all left behind
    assert schema_status(url).state == "unversioned"
    with pytest.raises(SchemaVersionError, match="no schema version .* run `marketflow db upgrade`"):
        await store.open()
    assert db("upgrade", "--url", url) == 0
    assert "schema upgraded (empty) -> 0003" in capsys.readouterr().out
    await store.open()
    assert await store.count_trades() == 5  # type: ignore[attr-defined]
    await store.close()


async def test_the_writer_spools_while_the_schema_is_behind_and_replays_after_the_upgrade(
    store_url: str, tmp_path: Path
) -> None:
    prepare(store_url)
    downgrade_to(store_url, "0001")
    bus: Bus[Trade] = Bus("trades")
    store = open_store(store_url)
    writer = StorageWriter(
        store,
        bus.subscribe("storage", 4, Overflow.BLOCK),
        batch_max=10,
        flush_interval_s=0.01,
        backoff=Backoff(0.01, 0.05),
        spool=Spool(tmp_path / "spool"),
        buffer_max=0,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await bus.publish(trades(0, 40))
            await wait_real(lambda: writer.statistics().spooled == 40)
            stats = writer.statistics()
            assert stats.state == "schema_mismatch"
            assert stats.last_error is not None and UPGRADE_HINT in stats.last_error
            assert schema_status(store_url).current == "0001"  # nothing applied silently
            await trio.to_thread.run_sync(db, "upgrade", "--url", store_url)
            await wait_real(lambda: writer.statistics().rows_written == 40)
            bus.close()
    assert writer.statistics().spooled == 0


async def test_concurrent_first_starts_on_one_empty_database(pg_url: str) -> None:
    """Daemons starting at once on an empty database: one creates the schema, the others wait, then use it."""
    code = "import sys; from marketflow.storage.migrate import prepare; print(prepare(sys.argv[1]).state)"
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def start() -> None:
        results.append(await trio.run_process([sys.executable, "-c", code, pg_url], capture_stdout=True))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(start)
    assert [r.stdout for r in results] == [b"current\n"] * 3
    assert schema_status(pg_url).state == "current"


async def test_db_commands_read_the_url_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MARKETFLOW_STORAGE_URL", raising=False)
    url = f"sqlite:///{tmp_path}/c.db"
    config = tmp_path / "m.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n')
    assert db("current", "--config", str(config)) == 0
    assert f"{url}: schema none (empty; newest known 0003)" in capsys.readouterr().out
    assert db("check", "--config", str(config)) == 1
    assert "is empty: run `marketflow db upgrade`" in capsys.readouterr().err
    assert db("upgrade", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "schema upgraded (empty) -> 0003" in out and "TimescaleDB not applicable (SQLite)" in out
    assert db("upgrade", "--config", str(config)) == 0
    assert "schema already at 0003 (newest)" in capsys.readouterr().out
    assert db("current", "--config", str(config)) == 0
    assert "schema 0003 (current; newest known 0003)" in capsys.readouterr().out


async def test_timescaledb_is_skipped_cleanly_when_absent(
    pg_cluster: PgCluster, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    # This server has no TimescaleDB: the hypertable path must be a clean no-op, not an error.
    assert pg_cluster.psql(
        database, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    ) == ("0\n")
    assert db("upgrade", "--url", pg_url) == 0
    assert (
        "TimescaleDB extension not installed in this database: trades is a plain table"
        in capsys.readouterr().out
    )
    assert with_connection(pg_url, ensure_hypertable) == "absent"
    assert pg_cluster.psql(database, "SELECT relkind FROM pg_class WHERE relname = 'trades'") == "r\n"
    assert with_connection(f"sqlite:///{pg_cluster.root}/x.db", ensure_hypertable) == "not postgresql"


def test_db_upgrade_shows_progress_on_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from marketflow import progress

    url = f"sqlite:///{tmp_path}/p.db"
    monkeypatch.setattr(progress, "_is_tty", lambda stream: True)
    assert db("upgrade", "--url", url) == 0
    err = capsys.readouterr().err
    assert "db upgrade" in err  # the one redrawn line, on stderr
    monkeypatch.setattr(progress, "_is_tty", lambda stream: False)
    assert db("upgrade", "--url", f"sqlite:///{tmp_path}/q.db") == 0
    assert capsys.readouterr().err == ""  # not a terminal: quiet
