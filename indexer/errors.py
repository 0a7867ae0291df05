"""Typed exceptions raised by the indexer."""

from __future__ import annotations

from core.errors import ArchiveError

__all__ = ["ArchiveError", "IndexerError", "ManifestError"]


class IndexerError(Exception):
    """A run cannot start or go on (missing archive, broken manifest...)."""


class ManifestError(IndexerError):
    """The archive's manifest CSV is malformed."""
