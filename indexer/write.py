"""Stage 4: plan a batch (new images, further sources of stored images) and commit it in one transaction.

An image is distinct pixels within one patient and one study (storage.records.case_key). Pixels are
encoded once: the same pixels under another patient or study become another image whose vector is a
copy of the one already computed or stored. Copied rather than shared because the vector index holds
one vector per result id, and removing one patient must delete that patient's row and vector without
touching another's; the cost is one more vector for each cross-case duplicate, which is rare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from indexer.load import Frame, Outcome
from storage.records import FileIssue, ImageRecord, Link, Metadata, NewImage, SourceRecord, case_key
from storage.repository import Repository
from storage.store import Store


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


def commit(store: Store, repository: Repository, plan: Plan, vectors: np.ndarray, *, run_id: int,
           replaced: Sequence[int], touched: Sequence[tuple[int, int | None, float | None]],
           issues: Sequence[FileIssue]) -> None:
    """Everything of the batch in one transaction; its skipped/failed files right after."""
    by_pixels = dict(plan.stored)
    by_pixels.update({frame.pixel_sha256: vector for frame, vector in zip(plan.to_encode, vectors, strict=True)})
    for key, new in plan.new.items():
        new.vector = by_pixels[plan.copies[key]]
    store.write(list(plan.new.values()), plan.links, run_id=run_id, remove_source_ids=replaced, touched=touched)
    repository.record_issues(run_id, issues)
