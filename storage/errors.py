"""Typed exceptions raised by storage."""

from __future__ import annotations


class StorageError(Exception):
    """The store cannot be used (unreadable database, unwritable folder, corrupt schema...)."""


class FingerprintMismatchError(StorageError):
    """Vectors from one model were offered to an index built with another."""


class SchemaVersionError(StorageError):
    """The database was written by a newer medsearch than this one."""


class DimensionMismatchError(StorageError):
    """Vectors of the wrong dimension for this index."""
