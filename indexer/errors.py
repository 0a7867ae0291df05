"""Typed exceptions raised by the indexer."""

from __future__ import annotations


class IndexerError(Exception):
    """A run cannot start or go on (missing archive, broken manifest...)."""


class ArchiveError(IndexerError):
    """The archive itself is missing or unreadable."""


class ManifestError(IndexerError):
    """The archive's manifest CSV is malformed."""
