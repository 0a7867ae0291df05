"""Bring a database to the newest schema with Alembic, in place and in one transaction.

Two chains (storage/migrations/README.md): the index database and the access database. A database
written before Alembic (it has the chain's tables but no version table) is stamped with the first
revision, which describes exactly that schema, and then upgraded; a new database is created by the
revisions themselves; a database at a revision this code does not know was written by a newer
medsearch and is refused (SchemaVersionError), never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import DiskFullError, SchemaVersionError, StorageError
from storage.sql.db import describe_database_error, is_disk_full

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Chain:
    name: str
    version_table: str
    legacy_table: str  # present in a database of this chain written before Alembic
    baseline: str  # the revision that describes that schema

    @property
    def script(self) -> ScriptDirectory:
        return ScriptDirectory(str(MIGRATIONS / self.name))


INDEX = Chain("index", "alembic_version", legacy_table="images", baseline="0001")
ACCESS = Chain("access", "alembic_version_access", legacy_table="api_keys", baseline="a0001")


def run_environment(version_table: str) -> None:
    """The body of each chain's env.py: with the connection medsearch passes in (`upgrade` below), or
    with `-x url=...` when a developer runs the alembic command."""
    from alembic import context
    from sqlalchemy import create_engine

    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database with -x url=sqlite:///PATH (or a PostgreSQL URL)")
    with create_engine(url).begin() as own:
        context.configure(connection=own, version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()


def _is_schema_1(connection: Connection, chain: Chain, tables: set[str]) -> bool:
    """A database of the time before Alembic: the index database carried meta schema_version=1; the
    access database, its three tables."""
    if chain is ACCESS:
        return {"api_keys", "audit", "access_meta"} <= tables
    if "meta" not in tables:
        return False
    return connection.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == "1"


def head(chain: Chain) -> str:
    heads = chain.script.get_heads()
    assert len(heads) == 1, f"the {chain.name} migrations have several heads: {heads}"
    return heads[0]


def current_revision(engine: Engine, chain: Chain) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": chain.version_table})
        return context.get_current_revision()


def upgrade(engine: Engine, chain: Chain, attributes: dict[str, Any] | None = None) -> str | None:
    """Upgrade the database behind `engine` to the newest revision of `chain`. Returns the revision it
    started from (None for a new database). `attributes` reach the migrations (the report analyzer that
    backfills the report index). Raises SchemaVersionError for a newer database and StorageError for an
    unusable one."""
    script = chain.script
    try:
        with engine.begin() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": chain.version_table})
            current = context.get_current_revision()
            tables = set(inspect(connection).get_table_names())
            if current is None and chain.legacy_table in tables:
                if not _is_schema_1(connection, chain, tables):
                    raise StorageError(f"{engine.url.render_as_string(hide_password=True)} holds tables but no schema "
                                       "version that medsearch wrote: it is not a medsearch database")
                current = chain.baseline  # written before Alembic: exactly the baseline schema
                context.stamp(script, chain.baseline)
            if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
                raise SchemaVersionError(
                    f"the {chain.name} database {engine.url.render_as_string(hide_password=True)} is at schema "
                    f"revision {current}, which this medsearch does not know (it knows up to {head(chain)}): it was "
                    "written by a newer medsearch; upgrade medsearch to use it")
            if current == head(chain):
                return current
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS / chain.name))
            config.attributes.update(attributes or {})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise (DiskFullError if is_disk_full(exc) else StorageError)(describe_database_error(engine, exc)) from exc
    if current is not None:
        logger.info("the %s database schema was upgraded in place from revision %s to %s", chain.name, current,
                    head(chain))
    return current
