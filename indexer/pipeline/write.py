"""Stage 4: turn the outcomes of whole files into one transaction per batch (or per work unit): new images,
further sources of stored images, files skipped or failed, and their counts in the run's result.

An image is distinct pixels within one patient and one study (storage.records.case_key). Pixels are
encoded once: the same pixels under another patient or study become another image whose vector is a
copy of the one already computed or stored. Copied rather than shared because the vector index holds
one vector per result id, and removing one patient must delete that patient's row and vector without
touching another's; the cost is one more vector for each cross-case duplicate, which is rare.

Both engines feed a BatchWriter; they differ in where vectors come from (`encode`): the local engine
runs the model on the frames a batch needs, the Ray engine hands over the vectors its actors made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from core.model.encoder import Pending
from indexer.pipeline.load import Frame, Outcome
from indexer.pipeline.result import RunResult
from storage.records import (
    FileIssue,
    FileState,
    ImageRecord,
    Link,
    Metadata,
    NewImage,
    SourceRecord,
    UnitRecord,
    case_key,
)
from storage.sql.removal import ExclusionMatcher
from storage.sql.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)

Encode = Callable[[Sequence[Frame]], Pending]  # frames -> (n, dim) L2-normalised vectors, maybe still computing


@dataclass
class Plan:
    new: dict[tuple[str, str], NewImage] = field(default_factory=dict)  # (pixel sha, case) -> image to insert
    links: list[Link] = field(default_factory=list)  # further sources of stored images
    to_encode: list[Frame] = field(default_factory=list)  # distinct pixels the model has not seen
    copies: dict[tuple[str, str], str] = field(default_factory=dict)  # image -> pixel sha whose vector it gets
    stored: dict[str, np.ndarray] = field(default_factory=dict)  # pixel sha -> vector already in the database


def to_record(frame: Frame) -> ImageRecord:
    meta = asdict(frame.metadata)
    meta.pop("frame_index", None)  # a property of the source, not of the image
    return ImageRecord(pixel_sha256=frame.pixel_sha256, kind=frame.kind, metadata=Metadata(**meta))


def source_record(archive: str, outcome: Outcome, frame: Frame) -> SourceRecord:
    entry, meta = outcome.entry, frame.metadata
    return SourceRecord(archive, entry.path, meta.frame_index or 0, outcome.sha256 or "", entry.size, entry.mtime,
                        patient_id=meta.patient_id, study_uid=meta.study_uid, series_uid=meta.series_uid,
                        sop_uid=meta.sop_uid, accession_number=meta.accession_number)


def plan_batch(repository: Repository, archive: str, outcomes: Sequence[Outcome], dim: int) -> Plan:
    """Decide, frame by frame: a further source of a stored image of the same case (an exact
    duplicate, a moved or renamed file), a new image of pixels already encoded (a copied vector), or
    new pixels to encode."""
    frames = [(outcome, frame) for outcome in outcomes for frame in outcome.frames]
    keys = [(frame.pixel_sha256, case_key(frame.metadata.patient_id, frame.metadata.study_uid))
            for _, frame in frames]
    existing = repository.images_by_case(keys)
    plan = Plan()
    encoded: set[str] = set()
    for (outcome, frame), key in zip(frames, keys, strict=True):
        source = source_record(archive, outcome, frame)
        if key in existing:
            plan.links.append(Link(source, existing[key], to_record(frame)))
        elif key in plan.new:
            plan.new[key].sources.append(source)
        else:
            plan.new[key] = NewImage(to_record(frame), np.empty(0, dtype=np.float32), [source])
            if frame.pixel_sha256 not in encoded:
                plan.to_encode.append(frame)
                encoded.add(frame.pixel_sha256)
            plan.copies[key] = frame.pixel_sha256
    plan.stored = repository.vectors_by_pixels(list(encoded), dim)
    plan.to_encode = [frame for frame in plan.to_encode if frame.pixel_sha256 not in plan.stored]
    return plan


class BatchWriter:
    """Collects the outcomes of whole files and commits them together: `add` each outcome, `flush` when
    `full` (or, for a work unit, after its last file, with its id). Keeps the run's counts."""

    def __init__(self, store: Store, repository: Repository, source_key: str, known: dict[str, FileState],
                 exclusions: ExclusionMatcher, result: RunResult, encode: Encode, dim: int, batch_size: int = 16,
                 checkpoint_seconds: float = 30.0) -> None:
        self.store, self.repository, self.source_key, self.known = store, repository, source_key, known
        self.exclusions, self.result, self.encode, self.dim = exclusions, result, encode, dim
        self.batch_size, self.checkpoint_seconds = batch_size, checkpoint_seconds
        self._last_checkpoint = time.monotonic()
        self._in_flight: _Batch | None = None
        self._reset()

    def _reset(self) -> None:
        self.items: list[tuple[Outcome, FileState | None]] = []
        self.frames = 0
        self.files = 0
        self.touched: list[tuple[int, int | None, float | None]] = []
        self.issues: list[FileIssue] = []  # every record to write
        self.verdicts: list[FileIssue] = []  # of them, this run's skipped/failed/excluded files
        self.unchanged = 0

    @property
    def full(self) -> bool:
        return self.frames >= self.batch_size or len(self.issues) + len(self.touched) >= 1000

    def add(self, outcome: Outcome) -> None:
        entry, state = outcome.entry, self.known.get(outcome.entry.path)
        self.files += 1
        if outcome.status == "unchanged":
            self.unchanged += 1
        elif outcome.status == "same-content":
            self.unchanged += 1
            if state is not None and state.issue is not None:  # same verdict, remembered at the new time
                self.issues.append(replace(state.issue, size=entry.size, mtime=entry.mtime))
            elif state is not None:
                self.touched.extend((sid, entry.size, entry.mtime) for sid in state.source_ids)
        elif outcome.status == "frames" and (number := self._excluded(outcome)) is not None:
            self._record(outcome, "excluded", f"{self.source_key}/{entry.path}: excluded: removed from this index "
                         f"earlier (exclusion {number}; `medsearch-index exclusions` lists them)")
        elif outcome.status == "frames":
            self.items.append((outcome, state if state and state.source_ids else None))
            self.frames += len(outcome.frames)
        elif outcome.status in ("skipped", "failed"):
            self._record(outcome, outcome.status, outcome.reason)

    def _excluded(self, outcome: Outcome) -> int | None:
        meta = outcome.frames[0].metadata if outcome.frames else None
        return self.exclusions.file(self.source_key, outcome.entry.path, meta.patient_id if meta else None,
                                    meta.study_uid if meta else None)

    def _record(self, outcome: Outcome, kind: str, reason: str) -> None:
        entry, state = outcome.entry, self.known.get(outcome.entry.path)
        issue = FileIssue(self.source_key, entry.path, kind, reason, entry.size, entry.mtime, outcome.sha256)
        self.issues.append(issue)
        self.verdicts.append(issue)
        if kind == "failed":
            logger.warning("failed: %s", reason)
        else:  # skipped, or excluded (a removed patient, study or file)
            logger.info("%s: %s", kind, reason)
        if state is not None and state.source_ids:  # it was an image; now it is not
            self.items.append((Outcome(entry, "gone"), state))

    def flush(self, unit_id: str | None = None) -> bool:
        """Commit what was added (one transaction). Without `unit_id` the batch's encoding is started
        and the batch before it committed meanwhile (this one follows at the next flush or `finish`);
        a batch sharing pixels with the one in flight, or following one that replaces earlier sources
        (whose images may go), waits for it, so that it is planned against what that one stored.
        With `unit_id`: committed now as that work unit, which a repeated commit leaves alone; returns
        False then."""
        if not (self.items or self.touched or self.issues or unit_id):
            self.result.unchanged += self.unchanged  # nothing to write
            self._reset()
            return True
        pixels = {frame.pixel_sha256 for outcome, _ in self.items for frame in outcome.frames}
        flight = self._in_flight
        if unit_id or (flight is not None and (pixels & flight.pixels or any(s for _, s in flight.items))):
            self.finish()
        started = time.perf_counter()
        plan = plan_batch(self.repository, self.source_key, [outcome for outcome, _ in self.items], self.dim)
        batch = _Batch(plan, self.encode(plan.to_encode) if plan.to_encode else None, pixels, self.items,
                       self.touched, self.issues, self.verdicts, self.unchanged, UnitRecord(unit_id, self.files,
                                                                                            self.frames)
                       if unit_id else None)
        self.result.stage_seconds["encode"] += time.perf_counter() - started
        self._reset()
        previous, self._in_flight = self._in_flight, batch
        if previous is not None:
            self._commit(previous)
        if unit_id:
            return self.finish()
        return True

    def finish(self) -> bool:
        """Commit the batch in flight, if any. False when it was a work unit committed before."""
        batch, self._in_flight = self._in_flight, None
        return self._commit(batch) if batch is not None else True

    def _commit(self, batch: _Batch) -> bool:
        result, plan, started = self.result, batch.plan, time.perf_counter()
        vectors = batch.vectors.result() if batch.vectors is not None else np.zeros((0, self.dim), dtype=np.float32)
        encoded = time.perf_counter()
        by_pixels = dict(plan.stored)
        by_pixels.update({frame.pixel_sha256: vector for frame, vector in zip(plan.to_encode, vectors, strict=True)})
        for key, new in plan.new.items():
            new.vector = by_pixels[plan.copies[key]]
        replaced = [sid for _, state in batch.items if state is not None for sid in state.source_ids]
        written = self.store.write(list(plan.new.values()), plan.links, run_id=result.run_id,
                                   remove_source_ids=replaced, touched=batch.touched, issues=batch.issues,
                                   unit=batch.unit)
        if written is not None:  # the counts of a unit committed before are not counted again
            result.unchanged += batch.unchanged
            result.issues += batch.verdicts
            result.failed += sum(1 for issue in batch.verdicts if issue.kind == "failed")
            result.skipped += sum(1 for issue in batch.verdicts if issue.kind != "failed")
            result.indexed += len(plan.new)
            result.encoded += len(plan.to_encode)
            result.linked += len(plan.links) + sum(len(n.sources) - 1 for n in plan.new.values())
            result.units += batch.unit is not None
            self.repository.update_run(result.run_id, indexed=result.indexed, unchanged=result.unchanged,
                                       skipped=result.skipped, failed=result.failed)
        result.stage_seconds["encode"] += encoded - started
        result.stage_seconds["write"] += time.perf_counter() - encoded
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self.store.checkpoint()
            self._last_checkpoint = time.monotonic()
        return written is not None


@dataclass
class _Batch:
    """A planned batch whose vectors may still be computing, with what it will write."""

    plan: Plan
    vectors: Pending | None
    pixels: set[str]
    items: list[tuple[Outcome, FileState | None]]
    touched: list[tuple[int, int | None, float | None]]
    issues: list[FileIssue]
    verdicts: list[FileIssue]
    unchanged: int
    unit: UnitRecord | None
