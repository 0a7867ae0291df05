"""Opening a database folder: its repository (migrated in place) and its vector store, handed to the
entry point together and passed on apart."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from storage.errors import StorageError
from storage.layout import current_generation, take_writer_lock
from storage.reports.records import ReportAnalyzer
from storage.sql.db import sqlite_url
from storage.sql.repository import Repository
from storage.store import Store

DATABASE_NAME = "medsearch.sqlite"


class OpenIndex(NamedTuple):
    """A database folder opened by `open_index`: its vector store and its repository, passed on apart."""

    store: Store
    repository: Repository

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.repository.close()

    def __enter__(self) -> OpenIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(folder: str | Path, *, create: bool = False, database_url: str | None = None,
               read_only: bool = False, generation: bool = True, reports: ReportAnalyzer | None = None) -> OpenIndex:
    """Open the database folder (its current generation unless `generation` is False; created when
    `create`), migrating the database in place (`reports` backfills a new report index, and analyses
    what is written without its document). Raises StorageError if it is unusable, or
    WriterLockedError if another writer holds it."""
    folder = Path(folder)
    if generation and folder.is_dir():
        folder = current_generation(folder)
    if not folder.is_dir():
        if not create:
            raise StorageError(f"no medsearch database in {folder}: the folder does not exist "
                               "(run `medsearch-index run ARCHIVE --db FOLDER` first)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the database folder {folder}: {exc.strerror}") from exc
    database = folder / DATABASE_NAME
    if not create and database_url is None and not database.exists():
        raise StorageError(f"no medsearch database in {folder} (expected {DATABASE_NAME}; run "
                           "`medsearch-index run ARCHIVE --db FOLDER` first)")
    lock_file = None if read_only else take_writer_lock(folder)
    try:
        repository = Repository.open(database_url or sqlite_url(database), reports)
    except BaseException:
        if lock_file is not None:
            lock_file.close()
        raise
    try:
        store = Store(folder, repository, read_only=read_only, lock_file=lock_file)
    except BaseException:
        repository.close()
        if lock_file is not None:
            lock_file.close()
        raise
    return OpenIndex(store, repository)
