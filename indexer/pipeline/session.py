"""What every engine's run does around its loop: the checks before anything is written (the model, the
de-identification key, exclusions, the manifest), the run's record, the writer the loop feeds, and
the end: the last batch, pruning, a saved index, and the run's status whatever happened."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from core.deid import pseudonym
from core.sources import Source
from indexer.errors import IndexerError
from indexer.pipeline.load import LoadOptions
from indexer.pipeline.manifest import MANIFEST_NAME, ManifestRow, parse_manifest
from indexer.pipeline.result import RunResult
from indexer.pipeline.scan import Listing
from indexer.pipeline.write import BatchWriter, Encode
from storage.sql.removal import ExclusionMatcher
from storage.sql.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)


@dataclass
class IndexingRun:
    """One run in progress: the engine's loop feeds `writer`; `manifest` gives files their metadata."""

    result: RunResult
    writer: BatchWriter
    manifest: dict[str, ManifestRow]
    listing: Listing


def check_not_excluded(source: Source, exclusions: ExclusionMatcher) -> None:
    number = exclusions.archive(source.key)
    if number is not None:
        raise IndexerError(f"{source.key} was removed from this index (exclusion {number}), so it is not indexed "
                           f"again: lift that with `medsearch-index exclusions --lift {number}` to index it")


def record_idle_run(repository: Repository, source: Source, listing: Listing, seconds: float) -> RunResult:
    """Record a run that found nothing to read (every entry unchanged)."""
    run_id = repository.start_run(source.key, None)
    repository.finish_run(run_id, status="completed", indexed=0, unchanged=len(listing.entries), skipped=0,
                          failed=0, seconds=seconds)
    return RunResult(run_id=run_id, archive=source.key, unchanged=len(listing.entries), seconds=seconds)


def read_manifest(source: Source, listing: Listing, manifest_bytes: bytes | None) -> dict[str, ManifestRow]:
    if manifest_bytes is not None:
        return parse_manifest(manifest_bytes, "--manifest")
    if any(entry.path == MANIFEST_NAME for entry in listing.entries):
        return parse_manifest(source.read(MANIFEST_NAME), f"{source.key}/{MANIFEST_NAME}")
    return {}


@contextmanager
def indexing_run(source: Source, store: Store, repository: Repository, fingerprint: dict[str, Any],
                 listing: Listing, load: LoadOptions, encode: Encode, *, manifest_bytes: bytes | None = None,
                 batch_size: int = 16, checkpoint_seconds: float = 30.0, prune: bool = False) -> Iterator[IndexingRun]:
    """Raises ManifestError, FingerprintMismatchError or StorageError before anything is written when
    the run cannot start; a failure inside leaves every committed batch and records the run's status."""
    started = time.perf_counter()
    exclusions = repository.exclusion_matcher()
    check_not_excluded(source, exclusions)
    bound = store.bind_model(fingerprint)
    deid = f"on, key {pseudonym('key-check', load.deid_secret, 'key')}" if load.deid_secret else "off"
    repository.ensure_meta(
        "deidentify", deid, "every run into one index must use the same de-identification setting and key: "
        "rerun with the setting this index was built with, or use another --db folder")
    manifest = read_manifest(source, listing, manifest_bytes)
    result = RunResult(run_id=repository.start_run(source.key, fingerprint["key"]), archive=source.key)
    writer = BatchWriter(store, repository, source.key, listing.known, exclusions, result, encode, bound.dim,
                         batch_size, checkpoint_seconds)
    failed = False
    try:
        yield IndexingRun(result, writer, manifest, listing)
        writer.flush()
        writer.finish()
        if prune:
            present = {entry.path for entry in listing.entries}
            gone = [sid for path, state in listing.known.items() if path not in present for sid in state.source_ids]
            if gone:
                store.remove_sources(gone)
                result.pruned = len(gone)
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    except BaseException:
        failed = True
        raise
    finally:
        store.checkpoint()
        result.seconds = time.perf_counter() - started
        status = "interrupted" if result.interrupted else "failed" if failed else "completed"
        repository.finish_run(result.run_id, status=status, indexed=result.indexed, unchanged=result.unchanged,
                              skipped=result.skipped, failed=result.failed, seconds=result.seconds)
    missing = set(manifest) - {entry.path for entry in listing.entries}
    if missing:
        logger.warning("%d manifest rows name files not found in the archive, e.g. %s", len(missing),
                       sorted(missing)[0])
