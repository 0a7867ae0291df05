"""Engine creation (SQLite in WAL mode with a busy timeout and secure deletion) and the translation of
database failures into StorageError with a sentence a person can act on."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DiskFullError, StorageError

BUSY_TIMEOUT_MS = 30_000
MMAP_BYTES = 1 << 40  # SQLite caps it at its compiled SQLITE_MAX_MMAP_SIZE


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Python's sqlite3 begins transactions only before data changes, so DDL would commit statement by
    # statement: turn its own handling off and begin every transaction explicitly (_sqlite_begin), so
    # that a migration (tables and data together) commits whole or not at all
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # deleted rows are overwritten, so that a removed patient leaves no bytes behind in the file
    cursor.execute("PRAGMA secure_delete=ON")
    # reads through a memory map (address space, not memory): the stored vectors a compressed index
    # re-ranks from are read from the page cache without a copy per page
    cursor.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, foreign keys, secure deletion and
    transactions that hold DDL too."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100), or ENOSPC/EDQUOT from the OS."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).lower()
    return ("database or disk is full" in text or "no space left on device" in text
            or getattr(original, "sqlstate", None) == "53100")


def describe_database_error(engine: Engine, exc: BaseException) -> str:
    where = engine.url.database if engine.dialect.name == "sqlite" else engine.url.render_as_string(True)
    if is_disk_full(exc):
        return f"the disk holding the database {where} is full: free space and run the command again"
    original = getattr(exc, "orig", None) or exc
    return f"the database {where} is unusable: {original}"


@contextmanager
def database_errors(engine: Engine) -> Iterator[None]:
    """Turn SQLAlchemy's failures into StorageError (DiskFullError for a full disk), naming the database."""
    try:
        yield
    except (OperationalError, DatabaseError) as exc:
        error = DiskFullError if is_disk_full(exc) else StorageError
        raise error(describe_database_error(engine, exc)) from exc
