"""Typed exceptions raised by storage: one root, StorageError, that the CLIs and the API map to exit
codes and HTTP errors."""

from __future__ import annotations


class StorageError(Exception):
    """The store cannot be used (unreadable database, unwritable folder, corrupt schema...)."""


class FingerprintMismatchError(StorageError):
    """Vectors from one model were offered to an index built with another."""


class SchemaVersionError(StorageError):
    """The database was written by a newer medsearch than this one."""


class DimensionMismatchError(StorageError):
    """Vectors of the wrong dimension for this index."""


class DiskFullError(StorageError):
    """A write failed because the disk (or the database's quota) is full; what was committed is kept."""


class WriterLockedError(StorageError):
    """Another process is writing to the same database folder."""
