"""The local engine's loop: read -> load (decode, render, resize to the model's input in worker
processes, which read folder files and zip members themselves; tar and PACS entries are read here, in
order) -> encode in batches in this process -> write (the previous batch, while this one encodes),
timing each stage.

Incremental: a file whose path, size and modification time are unchanged is not even read; one
whose content hash is unchanged is not decoded; pixels already indexed are not encoded again.
Crash-safe: every batch commits in one transaction (rows, vectors, sources, file records), all frames
of a file in the same batch; the FAISS index is derived and caught up on the next open; so a run
killed at any moment and run again ends in the state a clean run reaches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

from core.imaging.preprocess import is_reduced, rendering_from_version
from core.model.encoder import Encoder
from core.sources import Entry, ReadItem, Source
from indexer.errors import IndexerError
from indexer.pipeline.encode import BatchEncoder
from indexer.pipeline.load import LoadOptions, LoadPool, Outcome, Task
from indexer.pipeline.manifest import MANIFEST_NAME
from indexer.pipeline.result import Progress, ProgressFactory, RunResult
from indexer.pipeline.scan import Listing, list_source, unchanged
from indexer.pipeline.session import IndexingRun, indexing_run
from storage.sql.repository import Repository
from storage.store import Store


def run_indexing(source: Source, store: Store, repository: Repository, encoder: Encoder, *, batch_size: int = 16,
                 options: LoadOptions | None = None, manifest_bytes: bytes | None = None,
                 progress: ProgressFactory | None = None, checkpoint_seconds: float = 30.0, workers: int = 0,
                 prune: bool = False, pool: LoadPool | None = None, listing: Listing | None = None) -> RunResult:
    """Index every image of `source` into the store. Raises ManifestError, FingerprintMismatchError
    or StorageError before anything is written when the run cannot start.

    `pool`: decoding workers the caller started (for example while the model loaded), closed by the
    caller; otherwise `workers` processes are started here and stopped at the end.
    `listing`: the source's listing, when the caller made it already (`list_source`)."""
    reduced = is_reduced(rendering_from_version(encoder.fingerprint.preprocessing_version))
    options = replace(options or LoadOptions(), reduced=reduced)  # decoded as the model's fingerprint says
    if pool is not None and pool.reduced != reduced:
        raise IndexerError("the decoding workers were started for another rendering than the model's fingerprint")
    listing = listing or list_source(source, repository)  # listed once: millions of files are walked once
    with indexing_run(source, store, repository, encoder.fingerprint.to_dict(), listing, options,
                      BatchEncoder(encoder, batch_size).start, manifest_bytes=manifest_bytes,
                      batch_size=batch_size, checkpoint_seconds=checkpoint_seconds, prune=prune) as run:
        own_pool = pool is None
        if pool is None:
            pool = LoadPool(workers, options, encoder.preprocessor_spec, local=encoder.preprocess,
                            local_side=encoder.decode_side, eager=False)
        bar = progress(len(listing.entries)) if progress else Progress()
        try:
            for outcome in pool.map(tasks(source, run, options)):
                run.writer.add(outcome)
                if run.writer.full:
                    run.writer.flush()
                bar.advance()
                bar.note(indexed=run.result.indexed, failed=run.result.failed)
        finally:
            if own_pool:
                pool.close()
            bar.close()
    return run.result


def tasks(source: Source, run: IndexingRun, options: LoadOptions) -> Iterator[Task | Outcome]:
    """What each entry needs, in listing order: nothing (unchanged, the manifest, too large: an outcome
    at once) or a load task (a local file or zip member is read by the worker; other bytes are read here, in one
    sequential pass for a tar)."""
    known, stages = run.listing.known, run.result.stage_seconds

    def needed(entry: Entry) -> bool:
        return entry.path != MANIFEST_NAME and not unchanged(known.get(entry.path), entry) and (
            entry.size <= options.max_file_bytes)

    local = source.local_path("") is not None
    by_workers = local or source.random_access  # workers read the entries themselves
    stream: Iterator[ReadItem] = ((e, None) for e in run.listing.entries) if by_workers else source.iter_read(needed)
    t0 = time.perf_counter()
    for entry, data in stream:
        stages["read"] += time.perf_counter() - t0
        yield task_for(source, entry, data, run, options, local)
        t0 = time.perf_counter()


def task_for(source: Source, entry: Entry, data: bytes | OSError | None, run: IndexingRun, options: LoadOptions,
             local: bool) -> Task | Outcome:
    """The task (or the outcome known without reading) of one listed entry; both engines use it."""
    where = f"{source.key}/{entry.path}"
    state = run.listing.known.get(entry.path)
    if entry.path == MANIFEST_NAME:
        return Outcome(entry, "manifest")
    if unchanged(state, entry):
        return Outcome(entry, "unchanged")
    if entry.size > options.max_file_bytes:
        return Outcome(entry, "failed", reason=f"{where}: file of {entry.size} bytes exceeds the limit of "
                       f"{options.max_file_bytes} (setting MEDSEARCH_MAX_FILE_BYTES): not read")
    if isinstance(data, OSError):
        return Outcome(entry, "failed", reason=f"{where}: cannot read file: {data}")
    return Task(entry, where, data, source.local_path(entry.path) if local else None,
                state.file_sha256 if state else None, run.manifest.get(entry.path),
                archive=source.key if data is None and not local and source.random_access else None)
