"""The thin loop: scan -> load (in worker processes) -> encode in batches -> write, timing each stage.

Incremental: a file whose path, size and modification time are unchanged is not even read; one
whose content hash is unchanged is not decoded; an image whose pixels are already indexed (an exact
duplicate, or a moved or renamed file) is linked as a further source without being encoded again.
Crash-safe: every batch commits in one transaction (rows, vectors, sources), all frames of a file in
the same batch; the FAISS index is derived and caught up on the next open; so a run killed at any
moment and run again ends in the state a clean run reaches.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from core.deid import pseudonym
from core.encoder import Encoder
from indexer.encode import encode_frames
from indexer.errors import IndexerError
from indexer.load import LoadOptions, LoadPool, Outcome, Task
from indexer.manifest import MANIFEST_NAME, ManifestRow, parse_manifest
from indexer.scan import Archive, Entry, ReadItem
from indexer.write import commit, plan_batch
from storage.records import FileIssue, FileState
from storage.removal import ExclusionMatcher
from storage.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)


class Progress:
    """What the runner reports to; the CLI supplies a tqdm bar, library callers may pass nothing."""

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, **counts: int) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[int], Progress]


@dataclass
class RunResult:
    run_id: int
    archive: str
    indexed: int = 0  # new images (one per distinct pixels in a patient's study)
    encoded: int = 0  # of them, pixels the model had not seen (the others got a copy of a stored vector)
    linked: int = 0  # new sources of images already indexed (duplicates, moved files): not encoded
    unchanged: int = 0  # files left alone
    skipped: int = 0  # not images, objects without pixels
    failed: int = 0
    pruned: int = 0  # sources removed because their files are gone (--prune)
    seconds: float = 0.0
    stage_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    issues: list[FileIssue] = field(default_factory=list)
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def nothing_indexable(self) -> bool:
        return self.indexed == 0 and self.linked == 0 and self.unchanged == 0


def _read_manifest(archive: Archive, entries: list[Entry], manifest_bytes: bytes | None) -> dict[str, ManifestRow]:
    if manifest_bytes is not None:
        return parse_manifest(manifest_bytes, "--manifest")
    if any(entry.path == MANIFEST_NAME for entry in entries):
        return parse_manifest(archive.read(MANIFEST_NAME), f"{archive.key}/{MANIFEST_NAME}")
    return {}


def _excluded(exclusions: ExclusionMatcher, archive: Archive, outcome: Outcome) -> int | None:
    meta = outcome.frames[0].metadata if outcome.frames else None
    return exclusions.file(archive.key, outcome.entry.path, meta.patient_id if meta else None,
                           meta.study_uid if meta else None)


def _unchanged(state: FileState | None, entry: Entry) -> bool:
    return state is not None and state.size == entry.size and state.mtime == entry.mtime and (
        entry.mtime is not None)


@dataclass
class Listing:
    """An archive's entries and what the store knew of each path when they were listed."""

    entries: list[Entry]
    known: dict[str, FileState]

    @property
    def pending(self) -> int:
        """Entries that need reading: new, changed, or failed for a passing reason."""
        return sum(1 for entry in self.entries if not _unchanged(self.known.get(entry.path), entry))


def list_archive(archive: Archive, repository: Repository) -> Listing:
    """List `archive` against what the database knows. Lets a caller see whether anything is new before
    loading a model (a nightly run over a PACS), then pass it to run_indexing."""
    known = repository.archive_state(archive.key)
    return Listing(archive.entries(_KnownEntries(known)), known)


def record_idle_run(repository: Repository, archive: Archive, listing: Listing, seconds: float) -> RunResult:
    """Record a run that found nothing to read (every entry unchanged)."""
    run_id = repository.start_run(archive.key, None)
    repository.finish_run(run_id, status="completed", indexed=0, unchanged=len(listing.entries), skipped=0,
                          failed=0, seconds=seconds)
    return RunResult(run_id=run_id, archive=archive.key, unchanged=len(listing.entries), seconds=seconds)


def check_not_excluded(archive: Archive, exclusions: ExclusionMatcher) -> None:
    number = exclusions.archive(archive.key)
    if number is not None:
        raise IndexerError(f"{archive.key} was removed from this index (exclusion {number}), so it is not indexed "
                           f"again: lift that with `medsearch-index exclusions --lift {number}` to index it")


class _KnownEntries(Mapping[str, Entry]):
    """What the database knows of each path, as entries (made on access: no copy of a huge state)."""

    def __init__(self, known: dict[str, FileState]) -> None:
        self._known = known

    def __getitem__(self, path: str) -> Entry:
        state = self._known[path]
        return Entry(path, state.size or 0, state.mtime)

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


class _Batch:
    """Files whose outcomes wait to be written together (whole files only)."""

    def __init__(self) -> None:
        self.items: list[tuple[Outcome, FileState | None]] = []
        self.frames = 0
        self.touched: list[tuple[int, int | None, float | None]] = []
        self.issues: list[FileIssue] = []

    def __bool__(self) -> bool:
        return bool(self.items or self.touched or self.issues)


def run_indexing(
    archive: Archive,
    store: Store,
    repository: Repository,
    encoder: Encoder,
    *,
    batch_size: int = 16,
    options: LoadOptions | None = None,
    manifest_bytes: bytes | None = None,
    progress: ProgressFactory | None = None,
    checkpoint_seconds: float = 30.0,
    workers: int = 0,
    prune: bool = False,
    pool: LoadPool | None = None,
    listing: Listing | None = None,
) -> RunResult:
    """Index every image of `archive` into `store`. Raises ManifestError, FingerprintMismatchError
    or StorageError before anything is written when the run cannot start.

    `pool`: decoding workers the caller started (for example while the model loaded), closed by the
    caller; otherwise `workers` processes are started here and stopped at the end.
    `listing`: the archive's listing, when the caller made it already with this store (`list_archive`)."""
    options = options or LoadOptions()
    started = time.perf_counter()
    exclusions = repository.exclusion_matcher()
    check_not_excluded(archive, exclusions)
    manifest_info = store.bind_model(encoder.fingerprint.to_dict())
    deid = f"on, key {pseudonym('key-check', options.deid_secret, 'key')}" if options.deid_secret else "off"
    repository.ensure_meta(
        "deidentify", deid, "every run into one index must use the same de-identification setting and key: "
        "rerun with the setting this index was built with, or use another --db folder")
    listing = listing or list_archive(archive, repository)  # listed once: millions of files are walked once
    entries, known = listing.entries, listing.known
    manifest = _read_manifest(archive, entries, manifest_bytes)
    run_id = repository.start_run(archive.key, encoder.fingerprint.key)
    result = RunResult(run_id=run_id, archive=archive.key)
    stages = result.stage_seconds
    bar = progress(len(entries)) if progress else Progress()
    own_pool = pool is None
    if pool is None:
        pool = LoadPool(workers, options, encoder.preprocessor_spec, local=encoder.preprocess, eager=False)
    last_checkpoint = time.monotonic()
    failed_run = False

    def unchanged(entry: Entry) -> bool:
        return _unchanged(known.get(entry.path), entry)

    def oversized(entry: Entry) -> bool:  # refused from its declared size, never read
        return entry.size > options.max_file_bytes

    def tasks() -> Iterator[Task | Outcome]:
        t0 = time.perf_counter()
        local = archive.local_path("") is not None
        if local:
            stream: Iterator[ReadItem] = ((e, None) for e in entries)
        else:
            stream = archive.iter_read(lambda e: e.path != MANIFEST_NAME and not unchanged(e) and not oversized(e))
        for entry, data in stream:
            stages["read"] += time.perf_counter() - t0
            source = f"{archive.key}/{entry.path}"
            if entry.path == MANIFEST_NAME:
                yield Outcome(entry, "manifest")
            elif unchanged(entry):
                yield Outcome(entry, "unchanged")
            elif oversized(entry):
                yield Outcome(entry, "failed", reason=f"{source}: file of {entry.size} bytes exceeds the limit of "
                              f"{options.max_file_bytes} (setting MEDSEARCH_MAX_FILE_BYTES): not read")
            elif isinstance(data, OSError):
                yield Outcome(entry, "failed", reason=f"{source}: cannot read file: {data}")
            else:
                state = known.get(entry.path)
                yield Task(entry, source, data, archive.local_path(entry.path) if local else None,
                           state.file_sha256 if state else None, manifest.get(entry.path))
            t0 = time.perf_counter()

    batch = _Batch()

    def flush() -> None:
        nonlocal batch, last_checkpoint
        if not batch:
            return
        t0 = time.perf_counter()
        plan = plan_batch(repository, archive.key, [outcome for outcome, _ in batch.items], manifest_info.dim)
        vectors = encode_frames(encoder, plan.to_encode)
        t1 = time.perf_counter()
        replaced = [sid for _, state in batch.items if state is not None for sid in state.source_ids]
        commit(store, repository, plan, vectors, run_id=run_id, replaced=replaced, touched=batch.touched,
               issues=batch.issues)
        result.indexed += len(plan.new)
        result.encoded += len(plan.to_encode)
        result.linked += len(plan.links) + sum(len(n.sources) - 1 for n in plan.new.values())
        repository.update_run(run_id, indexed=result.indexed, unchanged=result.unchanged, skipped=result.skipped,
                              failed=result.failed)
        stages["encode"] += t1 - t0
        stages["write"] += time.perf_counter() - t1
        if time.monotonic() - last_checkpoint >= checkpoint_seconds:
            store.checkpoint()
            last_checkpoint = time.monotonic()
        batch = _Batch()

    def record(entry: Entry, kind: str, reason: str, sha: str | None) -> None:
        issue = FileIssue(archive.key, entry.path, kind, reason, entry.size, entry.mtime, sha)
        result.issues.append(issue)
        batch.issues.append(issue)
        if kind == "failed":
            result.failed += 1
            logger.warning("failed: %s", reason)
        else:  # skipped, or excluded (a removed patient, study or file)
            result.skipped += 1
            logger.info("%s: %s", kind, reason)

    try:
        for outcome in pool.map(tasks()):
            entry, state = outcome.entry, known.get(outcome.entry.path)
            if outcome.status == "unchanged":
                result.unchanged += 1
            elif outcome.status == "same-content":
                result.unchanged += 1
                if state is not None and state.issue is not None:  # same verdict, remembered at the new time
                    batch.issues.append(replace(state.issue, size=entry.size, mtime=entry.mtime))
                elif state is not None:
                    batch.touched.extend((sid, entry.size, entry.mtime) for sid in state.source_ids)
            elif outcome.status == "frames" and (number := _excluded(exclusions, archive, outcome)) is not None:
                record(entry, "excluded", f"{archive.key}/{entry.path}: excluded: removed from this index earlier "
                       f"(exclusion {number}; `medsearch-index exclusions` lists them)", outcome.sha256)
                if state is not None and state.source_ids:
                    batch.items.append((Outcome(entry, "gone"), state))
            elif outcome.status == "frames":
                batch.items.append((outcome, state if state and state.source_ids else None))
                batch.frames += len(outcome.frames)
            elif outcome.status in ("skipped", "failed"):
                record(entry, outcome.status, outcome.reason, outcome.sha256)
                if state is not None and state.source_ids:  # it was an image; now it is not
                    batch.items.append((Outcome(entry, "gone"), state))
            if batch.frames >= batch_size or len(batch.issues) + len(batch.touched) >= 1000:
                flush()
            bar.advance()
            bar.note(indexed=result.indexed, failed=result.failed)
        flush()
        if prune:
            present = {entry.path for entry in entries}
            gone = [sid for path, state in known.items() if path not in present for sid in state.source_ids]
            if gone:
                store.remove_sources(gone)
                result.pruned = len(gone)
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    except BaseException:
        failed_run = True
        raise
    finally:
        if own_pool:
            pool.close()
        bar.close()
        store.checkpoint()
        result.seconds = time.perf_counter() - started
        status = "interrupted" if result.interrupted else "failed" if failed_run else "completed"
        repository.finish_run(run_id, status=status, indexed=result.indexed, unchanged=result.unchanged,
                              skipped=result.skipped, failed=result.failed, seconds=result.seconds)
    missing = set(manifest) - {entry.path for entry in entries}
    if missing:
        logger.warning("%d manifest rows name files not found in the archive, e.g. %s",
                       len(missing), sorted(missing)[0])
    return result

