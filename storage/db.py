"""Engine creation (SQLite in WAL mode with a busy timeout) and schema versioning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import SchemaVersionError, StorageError
from storage.models import SCHEMA_VERSION, Base, Meta

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000

# version -> function upgrading a database from version-1 to version. None so far.
MIGRATIONS: dict[int, Callable[[Engine], None]] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def init_schema(engine: Engine) -> None:
    """Create the tables of a new database, or check and migrate an existing one."""
    try:
        existing = set(inspect(engine).get_table_names())
        if "meta" not in existing:
            Base.metadata.create_all(engine)
            with Session(engine) as session, session.begin():
                session.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        with Session(engine) as session:
            row = session.scalar(select(Meta).where(Meta.key == "schema_version"))
            version = int(row.value) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(f"database schema version {version} is newer than this medsearch "
                                     f"understands ({SCHEMA_VERSION}): upgrade medsearch")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            logger.info("migrating database schema to version %d", target)
            MIGRATIONS[target](engine)
            with Session(engine) as session, session.begin():
                session.merge(Meta(key="schema_version", value=str(target)))
        Base.metadata.create_all(engine)  # tables added since, if any
    except (OperationalError, DatabaseError) as exc:
        raise StorageError(f"database {engine.url.database} is unusable: {exc.orig}") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
