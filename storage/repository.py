"""Reads and writes of rows: images with their embeddings, the index manifest, runs and their errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DimensionMismatchError, FingerprintMismatchError, StorageError
from storage.models import EmbeddingRow, ImageRow, IndexManifestRow, Meta, RunErrorRow, RunRow


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class ImageRecord:
    """Everything stored about one image except its id (assigned on insert) and vector."""

    archive: str
    path: str
    sha256: str
    kind: str
    size: int | None = None
    mtime: float | None = None
    patient_id: str | None = None
    patient_sex: str | None = None
    patient_age: float | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    study_date: date | None = None
    study_description: str | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    frame_index: int = 0
    window: str | None = None
    burned_in_annotation: bool | None = None
    labels: list[str] = field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


RECORD_FIELDS = tuple(f.name for f in fields(ImageRecord))


@dataclass(frozen=True)
class Manifest:
    fingerprint_key: str
    model_name: str
    model_revision: str | None
    weights_sha256: str | None
    dim: int
    metric: str
    preprocessing_version: str
    random_weights: bool
    created_at: datetime


@dataclass(frozen=True)
class RunSummary:
    id: int
    archive: str
    status: str
    indexed: int
    skipped: int
    failed: int
    seconds: float | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class FileIssue:
    """A file a run did not index: kind 'failed' (unreadable) or 'skipped' (not an image, no pixels...)."""

    archive: str
    path: str
    kind: str
    reason: str


def image_to_dict(row: ImageRow) -> dict[str, Any]:
    data = {name: getattr(row, name) for name in RECORD_FIELDS}
    data["id"] = row.id
    data["indexed_at"] = row.indexed_at
    return data


class Repository:
    """All SQL lives here. Each public method is one transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # -- manifest -------------------------------------------------------------------------------------
    def get_manifest(self) -> Manifest | None:
        with self._sessions() as session:
            row = session.get(IndexManifestRow, 1)
            if row is None:
                return None
            return Manifest(
                fingerprint_key=row.fingerprint_key, model_name=row.model_name,
                model_revision=row.model_revision, weights_sha256=row.weights_sha256, dim=row.dim,
                metric=row.metric, preprocessing_version=row.preprocessing_version,
                random_weights=bool(row.random_weights), created_at=row.created_at,
            )

    def ensure_manifest(self, fingerprint: dict[str, Any], metric: str = "ip") -> Manifest:
        """Record the model of a new index, or check that `fingerprint` is the one recorded."""
        with self._sessions() as session, session.begin():
            row = session.get(IndexManifestRow, 1)
            if row is None:
                session.add(IndexManifestRow(
                    id=1, fingerprint_key=fingerprint["key"], model_name=fingerprint["name"],
                    model_revision=fingerprint.get("revision"), weights_sha256=fingerprint.get("weights_sha256"),
                    dim=int(fingerprint["dim"]), metric=metric,
                    preprocessing_version=str(fingerprint["preprocessing_version"]),
                    random_weights=bool(fingerprint.get("random_weights", False)), created_at=utcnow(),
                ))
            elif row.fingerprint_key != fingerprint["key"]:
                raise FingerprintMismatchError(
                    f"this index was built with model {row.model_name!r} (fingerprint {row.fingerprint_key}, "
                    f"{row.dim}-d, preprocessing v{row.preprocessing_version}); the model now in use is "
                    f"{fingerprint['name']!r} (fingerprint {fingerprint['key']}, {fingerprint['dim']}-d, "
                    f"preprocessing v{fingerprint['preprocessing_version']}). Vectors of different models "
                    "cannot be mixed: use the same model, or another --db folder for the new one."
                )
        manifest = self.get_manifest()
        assert manifest is not None
        return manifest

    # -- images and embeddings ------------------------------------------------------------------------
    def sources_in_archive(self, archive: str) -> dict[str, tuple[list[int], str]]:
        """path -> (image ids, one per indexed frame; sha256) of everything already indexed from `archive`."""
        found: dict[str, tuple[list[int], str]] = {}
        with self._sessions() as session:
            rows = session.execute(
                select(ImageRow.path, ImageRow.id, ImageRow.sha256).where(ImageRow.archive == archive)
            )
            for path, image_id, sha in rows:
                found.setdefault(path, ([], sha))[0].append(image_id)
        return found

    def get_meta(self, key: str) -> str | None:
        with self._sessions() as session:
            row = session.get(Meta, key)
            return row.value if row else None

    def ensure_meta(self, key: str, value: str, explain: str) -> None:
        """Record `value` under `key` the first time; afterwards refuse a different one (StorageError)."""
        with self._sessions() as session, session.begin():
            row = session.get(Meta, key)
            if row is None:
                session.add(Meta(key=key, value=value))
            elif row.value != value:
                raise StorageError(f"{explain} (recorded {key}={row.value}, asked {key}={value})")

    def add_images(self, records: Sequence[ImageRecord], vectors: np.ndarray, fingerprint_key: str,
                   run_id: int | None = None, replace_ids: Sequence[int] = ()) -> list[int]:
        """Insert images and their vectors in one transaction, first deleting `replace_ids` (changed
        files). Returns the new ids, in the order of `records`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(records):
            raise DimensionMismatchError(f"{len(records)} records but vectors of shape {vectors.shape}")
        now = utcnow()
        with self._sessions() as session, session.begin():
            if replace_ids:
                session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(list(replace_ids))))
                session.execute(delete(ImageRow).where(ImageRow.id.in_(list(replace_ids))))
            rows = [ImageRow(**{name: getattr(r, name) for name in RECORD_FIELDS}, run_id=run_id,
                             indexed_at=now) for r in records]
            session.add_all(rows)
            session.flush()
            session.add_all(EmbeddingRow(image_id=row.id, fingerprint_key=fingerprint_key,
                                         vector=vectors[i].tobytes()) for i, row in enumerate(rows))
            return [row.id for row in rows]

    def delete_images(self, ids: Sequence[int]) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(list(ids))))
            session.execute(delete(ImageRow).where(ImageRow.id.in_(list(ids))))

    def get_images(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """id -> the image's stored fields, for the ids that exist."""
        if not ids:
            return {}
        with self._sessions() as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(list(ids))))
            return {row.id: image_to_dict(row) for row in rows}

    def count_images(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)) or 0)

    def embedding_ids(self) -> np.ndarray:
        with self._sessions() as session:
            ids = session.scalars(select(EmbeddingRow.image_id)).all()
        return np.asarray(ids, dtype=np.int64)

    def get_embeddings(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, vectors) for `ids`, in ascending id order."""
        with self._sessions() as session:
            rows = session.execute(
                select(EmbeddingRow.image_id, EmbeddingRow.vector)
                .where(EmbeddingRow.image_id.in_([int(i) for i in ids])).order_by(EmbeddingRow.image_id)
            ).all()
        return self._unpack(rows, dim)

    def iter_embeddings(self, dim: int, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids, vectors) in ascending id order, `batch` at a time."""
        last = -1
        while True:
            with self._sessions() as session:
                rows = session.execute(
                    select(EmbeddingRow.image_id, EmbeddingRow.vector).where(EmbeddingRow.image_id > last)
                    .order_by(EmbeddingRow.image_id).limit(batch)
                ).all()
            if not rows:
                return
            last = rows[-1][0]
            yield self._unpack(rows, dim)

    @staticmethod
    def _unpack(rows: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        if vectors.size != len(rows) * dim:
            raise DimensionMismatchError(f"stored vectors are not {dim}-dimensional")
        return ids, vectors.reshape(len(rows), dim)

    # -- runs -----------------------------------------------------------------------------------------
    def start_run(self, archive: str, fingerprint_key: str | None) -> int:
        with self._sessions() as session, session.begin():
            row = RunRow(archive=archive, fingerprint_key=fingerprint_key, started_at=utcnow(), status="running")
            session.add(row)
            session.flush()
            return row.id

    def record_issues(self, run_id: int, issues: Sequence[FileIssue]) -> None:
        if not issues:
            return
        with self._sessions() as session, session.begin():
            session.add_all(RunErrorRow(run_id=run_id, archive=i.archive, path=i.path, kind=i.kind,
                                        reason=i.reason) for i in issues)

    def finish_run(self, run_id: int, *, status: str, indexed: int, skipped: int, failed: int,
                   seconds: float) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is None:
                return
            row.status, row.indexed, row.skipped, row.failed = status, indexed, skipped, failed
            row.seconds, row.finished_at = seconds, utcnow()

    def list_runs(self) -> list[RunSummary]:
        with self._sessions() as session:
            rows = session.scalars(select(RunRow).order_by(RunRow.id)).all()
            return [RunSummary(id=r.id, archive=r.archive, status=r.status, indexed=r.indexed,
                               skipped=r.skipped, failed=r.failed, seconds=r.seconds,
                               started_at=r.started_at, finished_at=r.finished_at) for r in rows]

    def run_issues(self, run_id: int) -> list[FileIssue]:
        with self._sessions() as session:
            rows = session.scalars(select(RunErrorRow).where(RunErrorRow.run_id == run_id)
                                   .order_by(RunErrorRow.id)).all()
            return [FileIssue(archive=r.archive, path=r.path, kind=r.kind, reason=r.reason) for r in rows]
