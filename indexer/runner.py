"""The thin loop: scan -> load -> encode in batches -> write, timing each stage.

A file that cannot be indexed is recorded with its path and reason and the run goes on. A file whose
path is already indexed with the same content is left alone; one whose content changed is re-indexed
in place (old row and vector replaced in the same transaction), so reruns never duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from core.deid import pseudonym
from core.encoder import Encoder
from core.errors import ImageError, NoPixelDataError, NotAnImageError
from indexer.encode import encode_batch
from indexer.load import LoadOptions, Prepared, prepare, sha256_of
from indexer.manifest import MANIFEST_NAME, ManifestRow, parse_manifest
from indexer.scan import Archive
from indexer.write import Writer
from storage.repository import FileIssue
from storage.store import Store

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[int], "Progress"]


class Progress:
    """What the runner reports to; the CLI supplies a tqdm bar, library callers may pass nothing."""

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, **counts: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class RunResult:
    run_id: int
    archive: str
    indexed: int = 0
    unchanged: int = 0
    skipped: int = 0  # not images, objects without pixels (unchanged files not included)
    failed: int = 0
    seconds: float = 0.0
    stage_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    issues: list[FileIssue] = field(default_factory=list)
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def nothing_indexable(self) -> bool:
        return self.indexed == 0 and self.unchanged == 0


def _read_manifest(archive: Archive, manifest_bytes: bytes | None) -> dict[str, ManifestRow]:
    if manifest_bytes is not None:
        return parse_manifest(manifest_bytes, "--manifest")
    if any(entry.path == MANIFEST_NAME for entry in archive.entries()):
        return parse_manifest(archive.read(MANIFEST_NAME), f"{archive.key}/{MANIFEST_NAME}")
    return {}


def run_indexing(
    archive: Archive,
    store: Store,
    encoder: Encoder,
    *,
    batch_size: int = 16,
    options: LoadOptions | None = None,
    manifest_bytes: bytes | None = None,
    progress: ProgressFactory | None = None,
    checkpoint_seconds: float = 30.0,
) -> RunResult:
    """Index every image of `archive` into `store`. Raises ManifestError, FingerprintMismatchError
    or StorageError before anything is written when the run cannot start."""
    options = options or LoadOptions()
    started = time.perf_counter()
    manifest = _read_manifest(archive, manifest_bytes)
    store.bind_model(encoder.fingerprint.to_dict())
    deid = f"on, key {pseudonym('key-check', options.deid_secret, 'key')}" if options.deid_secret else "off"
    store.repository.ensure_meta(
        "deidentify", deid, "every run into one index must use the same de-identification setting and key: "
        "rerun with the setting this index was built with, or use another --db folder")
    known = store.repository.sources_in_archive(archive.key)
    entries = archive.entries()
    run_id = store.repository.start_run(archive.key, encoder.fingerprint.key)
    result = RunResult(run_id=run_id, archive=archive.key)
    writer = Writer(store, archive.key, run_id, checkpoint_seconds)
    bar = progress(len(entries)) if progress else Progress()
    stages = result.stage_seconds
    batch: list[Prepared] = []  # whole files only: all frames of a file commit together
    replace: list[int] = []
    pending_issues: list[FileIssue] = []
    seen_manifest_paths: set[str] = set()

    def flush_batch() -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        vectors = encode_batch(encoder, batch, batch_size)
        t1 = time.perf_counter()
        writer.write(batch, vectors, replace_ids=replace)
        stages["encode"] += t1 - t0
        stages["write"] += time.perf_counter() - t1
        result.indexed += len(batch)
        store.repository.record_issues(run_id, pending_issues)
        pending_issues.clear()
        batch.clear()
        replace.clear()

    def issue(path: str, kind: str, reason: str) -> None:
        found = FileIssue(archive=archive.key, path=path, kind=kind, reason=reason)
        result.issues.append(found)
        pending_issues.append(found)
        if kind == "failed":
            result.failed += 1
            logger.warning("failed: %s", reason)
        else:
            result.skipped += 1
            logger.info("skipped: %s", reason)

    try:
        t_read = time.perf_counter()
        for entry, data in archive.iter_read():
            stages["read"] += time.perf_counter() - t_read
            source = f"{archive.key}/{entry.path}"
            if entry.path == MANIFEST_NAME:
                pass  # metadata, read above
            elif isinstance(data, OSError):
                issue(entry.path, "failed", f"{source}: cannot read file: {data}")
            else:
                t0 = time.perf_counter()
                sha = sha256_of(data)
                previous = known.get(entry.path)
                if previous is not None and previous[1] == sha:
                    result.unchanged += 1
                else:
                    try:
                        batch.extend(prepare(entry, data, source, manifest.get(entry.path), options, sha))
                        if previous is not None:
                            replace.extend(previous[0])
                        seen_manifest_paths.add(entry.path)
                    except (NotAnImageError, NoPixelDataError) as exc:
                        issue(entry.path, "skipped", str(exc))
                    except ImageError as exc:
                        issue(entry.path, "failed", str(exc))
                stages["load"] += time.perf_counter() - t0
                if len(batch) >= batch_size:
                    flush_batch()
            bar.advance()
            bar.note(failed=result.failed)
            t_read = time.perf_counter()
        flush_batch()
        store.repository.record_issues(run_id, pending_issues)
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    finally:
        bar.close()
        writer.flush()
        result.seconds = time.perf_counter() - started
        status = "interrupted" if result.interrupted else "completed"
        store.repository.finish_run(run_id, status=status, indexed=result.indexed,
                                    skipped=result.skipped + result.unchanged, failed=result.failed,
                                    seconds=result.seconds)
    missing = set(manifest) - seen_manifest_paths - set(known)
    if missing:
        logger.warning("%d manifest rows name files not found in the archive, e.g. %s",
                       len(missing), sorted(missing)[0])
    return result

