"""Stage 4: plan a batch (new images, further sources of known images) and commit it in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from indexer.load import Frame, Outcome
from storage.repository import FileIssue, ImageRecord, NewImage, SourceRecord
from storage.store import Store


@dataclass
class Plan:
    new: dict[str, NewImage] = field(default_factory=dict)  # pixel sha -> image to insert
    links: list[tuple[SourceRecord, int]] = field(default_factory=list)  # source -> existing image id
    to_encode: list[Frame] = field(default_factory=list)  # in the order of `new`


def to_record(frame: Frame) -> ImageRecord:
    meta = asdict(frame.metadata)
    meta.pop("frame_index", None)  # a property of the source, not of the image
    return ImageRecord(pixel_sha256=frame.pixel_sha256, kind=frame.kind, **meta)


def plan_batch(store: Store, archive: str, outcomes: Sequence[Outcome]) -> Plan:
    """Decide, frame by frame, whether its pixels are new (encode and insert) or already indexed
    (record one more source: an exact duplicate, or a moved or renamed file)."""
    frames = [(outcome, frame) for outcome in outcomes for frame in outcome.frames]
    existing = store.repository.images_by_pixel_sha([frame.pixel_sha256 for _, frame in frames])
    plan = Plan()
    for outcome, frame in frames:
        entry = outcome.entry
        meta = frame.metadata
        source = SourceRecord(archive, entry.path, meta.frame_index or 0, outcome.sha256 or "", entry.size,
                              entry.mtime, patient_id=meta.patient_id, study_uid=meta.study_uid,
                              series_uid=meta.series_uid, sop_uid=meta.sop_uid,
                              accession_number=meta.accession_number)
        if frame.pixel_sha256 in existing:
            plan.links.append((source, existing[frame.pixel_sha256]))
        elif frame.pixel_sha256 in plan.new:
            plan.new[frame.pixel_sha256].sources.append(source)
        else:
            plan.new[frame.pixel_sha256] = NewImage(to_record(frame), np.empty(0, dtype=np.float32), [source])
            plan.to_encode.append(frame)
    return plan


def commit(store: Store, plan: Plan, vectors: np.ndarray, *, run_id: int, replaced: Sequence[int],
           touched: Sequence[tuple[int, int | None, float | None]], issues: Sequence[FileIssue]) -> None:
    """Everything of the batch in one transaction; its skipped/failed files right after."""
    for frame, vector in zip(plan.to_encode, vectors, strict=True):
        plan.new[frame.pixel_sha256].vector = vector
    store.write(list(plan.new.values()), plan.links, run_id=run_id, remove_source_ids=replaced, touched=touched)
    store.repository.record_issues(run_id, issues)
