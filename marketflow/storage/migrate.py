"""Versioned schema migrations (alembic) for both engines, and the `marketflow db` command.

The revisions live in `marketflow/storage/migrations/versions/` and ship inside the package, so they work
from an installed wheel. The daemon checks the schema when it connects and changes nothing silently, with
one exception: a database holding none of marketflow's tables is initialised to the newest revision, so a
first start just works. A database behind the code is an error that says to run `marketflow db upgrade`;
one ahead of the code (upgraded by a newer marketflow) is an error too. Databases created by marketflow 0.1
(tables, no version) are "unversioned": `db upgrade` records them as the baseline revision, then upgrades.

PostgreSQL is reached through SQLAlchemy's asyncpg dialect on a private event loop (`asyncio.run` in the
calling thread), so this module needs no second driver and leaves the process's asyncio policy alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, TypeVar

import attrs
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from marketflow.storage.schema import metadata
from marketflow.storage.store import SchemaVersionError, StorageError

SCRIPT_LOCATION: Final = "marketflow.storage:migrations"
BASELINE_REVISION: Final = "0001"
VERSION_TABLE: Final = "alembic_version"
CONNECT_TIMEOUT_S: Final = 10.0

SchemaState = Literal["empty", "unversioned", "current", "behind", "ahead"]
Timescale = Literal["not postgresql", "absent", "hypertable", "created"]
T = TypeVar("T")

# alembic keeps its running context in module globals: one migration at a time per process. Between
# processes (two daemons on one empty database) env.py's advisory lock does the same on PostgreSQL.
_alembic_lock = threading.Lock()


# -- URLs -----------------------------------------------------------------------------------------------


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def display_url(url: str) -> str:
    """The URL for logs and status: any password (in the userinfo or a `password=` query) is `***`."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return url.partition("://")[0] + "://***"  # unparseable: show nothing that could be a secret
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` → `postgresql://…` (what asyncpg itself accepts)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _sqlalchemy_url(url: str) -> str:
    return (
        url.replace("postgresql://", "postgresql+asyncpg://", 1) if url.startswith("postgresql://") else url
    )


# -- revisions ------------------------------------------------------------------------------------------


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this marketflow knows."""
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships its revisions
        raise StorageError(f"no migrations found in {SCRIPT_LOCATION}")
    return head


def known_revisions() -> list[str]:
    """Every revision this marketflow knows, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


@attrs.frozen
class SchemaStatus:
    """Where a database's schema stands against this marketflow's newest revision."""

    state: SchemaState
    current: str | None
    head: str

    def problem(self, where: str) -> str | None:
        """Why the daemon must not write to this database as it is (None: it may; empty is initialised)."""
        if self.state == "behind":
            return (
                f"the database {where} has schema revision {self.current}, older than this marketflow's "
                f"{self.head}: run `marketflow db upgrade` (the daemon never migrates a schema in use)"
            )
        if self.state == "unversioned":
            return (
                f"the database {where} has marketflow tables but no schema version (made before "
                f"migrations): run `marketflow db upgrade`, which records it as revision {BASELINE_REVISION} "
                "and upgrades it"
            )
        if self.state == "ahead":
            return (
                f"the database {where} has schema revision {self.current}, newer than this marketflow knows "
                f"(its newest is {self.head}): it was upgraded by a newer marketflow; run that version"
            )
        return None


def classify(tables: set[str], version: str | None) -> SchemaStatus:
    """The status of a database holding `tables` and recording schema `version`."""
    head = head_revision()
    state: SchemaState
    if version is None:
        state = "unversioned" if tables & set(metadata.tables) else "empty"
    elif version == head:
        state = "current"
    elif version in known_revisions():
        state = "behind"
    else:
        state = "ahead"
    return SchemaStatus(state, version, head)


# -- operations on an open SQLAlchemy connection ----------------------------------------------------------


def inspect_schema(connection: sa.Connection) -> SchemaStatus:
    tables = set(sa.inspect(connection).get_table_names())
    version = None
    if VERSION_TABLE in tables:
        version = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return classify(tables - {VERSION_TABLE}, version)


def upgrade_connection(
    connection: sa.Connection, where: str = "?", *, show_progress: bool = False
) -> tuple[SchemaStatus, SchemaStatus, Timescale]:
    """Bring the schema to the newest revision; returns (before, after, TimescaleDB outcome).

    With `show_progress` (the `marketflow db upgrade` command) a terminal shows one line counting the
    revisions applied; elsewhere nothing is drawn."""
    from alembic.script import ScriptDirectory

    from marketflow.progress import Progress

    before = inspect_schema(connection)
    if before.state == "ahead":
        raise SchemaVersionError(before.problem(where) or "")
    config = alembic_config()
    config.attributes["connection"] = connection
    with _alembic_lock:
        current = before.current
        if before.state == "unversioned":
            command.stamp(config, BASELINE_REVISION)
            current = BASELINE_REVISION
        script = ScriptDirectory.from_config(config)
        pending = [r.revision for r in script.iterate_revisions("head", current or "base")][::-1]
        with Progress(total=len(pending) + 1, label="db upgrade", unit=" steps") as progress:
            progress.enabled = progress.enabled and show_progress
            for revision in pending:  # one at a time, so the line can count them
                command.upgrade(config, revision)
                progress.advance(1)
            timescale = ensure_hypertable(connection)
            progress.advance(1)
    if connection.in_transaction():
        connection.commit()
    return before, inspect_schema(connection), timescale


def ensure_hypertable(connection: sa.Connection) -> Timescale:
    """Make `trades` a TimescaleDB hypertable on `ts` when the extension is created in this database.

    Off otherwise (the table stays plain). Idempotent, and also converts an existing table (migrate_data),
    so running `marketflow db upgrade` after `CREATE EXTENSION timescaledb` turns it on.
    """
    if connection.dialect.name != "postgresql":
        return "not postgresql"
    installed = connection.execute(
        sa.text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    ).scalar()
    if installed is None:
        return "absent"
    exists = connection.execute(
        sa.text("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'trades'")
    ).scalar()
    if exists:
        return "hypertable"
    connection.execute(
        sa.text("SELECT create_hypertable('trades', 'ts', migrate_data => true, if_not_exists => true)")
    )
    return "created"


# -- operations on a URL --------------------------------------------------------------------------------


def with_connection(url: str, fn: Callable[[sa.Connection], T]) -> T:
    """Run `fn` on a fresh connection to `url` (blocking; call it from a worker thread in trio code)."""
    where = display_url(url)
    try:
        if is_sqlite(url):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, poolclass=NullPool)
            try:
                with engine.connect() as connection:
                    return fn(connection)
            finally:
                engine.dispose()
        return asyncio.run(_with_async_connection(_sqlalchemy_url(url), fn))
    except StorageError:
        raise
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot use the database {where}: {exc}") from exc
    except Exception as exc:  # asyncpg's own errors (refused, auth, ...) carry the useful message
        raise StorageError(f"cannot use the database {where}: {type(exc).__name__}: {exc}") from exc


async def _with_async_connection(url: str, fn: Callable[[sa.Connection], T]) -> T:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": CONNECT_TIMEOUT_S})
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


def schema_status(url: str) -> SchemaStatus:
    return with_connection(url, inspect_schema)


def upgrade(url: str) -> tuple[SchemaStatus, SchemaStatus, Timescale]:
    """`marketflow db upgrade`: migrate the database at `url` to the newest revision."""
    return with_connection(
        url, lambda connection: upgrade_connection(connection, display_url(url), show_progress=True)
    )


def prepare(url: str) -> SchemaStatus:
    """The daemon's start check: initialise an empty database, refuse any other schema but the newest."""

    def check(connection: sa.Connection) -> SchemaStatus:
        status = inspect_schema(connection)
        if status.state == "empty":
            upgrade_connection(connection, display_url(url))
            status = inspect_schema(connection)
        problem = status.problem(display_url(url))
        if problem is not None:
            raise SchemaVersionError(problem)
        return status

    return with_connection(url, check)


# -- `marketflow db` ------------------------------------------------------------------------------------


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    """The `db` command's actions: `marketflow db upgrade|current|check [--config PATH] [--url URL]`."""
    actions = parser.add_subparsers(dest="db_action", required=True, metavar="ACTION")
    helps = {
        "upgrade": "migrate the database to this marketflow's schema (creates it when empty)",
        "current": "print the database's schema revision and this marketflow's newest",
        "check": "exit 0 when the schema is current, 1 (saying why) otherwise",
    }
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--config",
            metavar="PATH",
            help="TOML config (default: $MARKETFLOW_CONFIG, else ./marketflow.toml, else built-in defaults)",
        )
        action.add_argument(
            "--url", metavar="URL", help="database URL (default: storage.url of the configuration)"
        )


def _url_from(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    from marketflow.config import default_config, load_config, resolve_config_path

    path = resolve_config_path(args.config, os.environ)
    config = load_config(path) if path is not None else default_config()
    return config.storage.url


def run_db_command(args: argparse.Namespace) -> int:
    """Run `marketflow db ACTION`; returns the exit code (config errors propagate as ConfigError)."""
    url = _url_from(args)
    where = display_url(url)
    try:
        if args.db_action == "upgrade":
            before, after, timescale = upgrade(url)
            if before.current == after.current:
                print(f"{where}: schema already at {after.current} (newest)")
            else:
                print(f"{where}: schema upgraded {before.current or '(empty)'} -> {after.current}")
            print(f"{where}: TimescaleDB {_TIMESCALE_TEXT[timescale]}")
            return 0
        status = schema_status(url)
        if args.db_action == "current":
            print(f"{where}: schema {status.current or 'none'} ({status.state}; newest known {status.head})")
            return 0
        problem = status.problem(where)
        if status.state == "empty":
            problem = f"the database {where} is empty: run `marketflow db upgrade` (or start the daemon)"
        if problem is None:
            print(f"{where}: schema {status.current} is current")
            return 0
        print(problem, file=sys.stderr)
        return 1
    except StorageError as exc:
        print(f"marketflow db {args.db_action}: {exc}", file=sys.stderr)
        return 1


_TIMESCALE_TEXT: Final[dict[Timescale, str]] = {
    "not postgresql": "not applicable (SQLite)",
    "absent": "extension not installed in this database: trades is a plain table",
    "hypertable": "trades is a hypertable",
    "created": "trades converted to a hypertable",
}
