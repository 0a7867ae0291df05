"""Reads and writes of rows: images with their sources and embeddings, the manifest, runs and issues."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sqlalchemy import Text, cast, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DimensionMismatchError, FingerprintMismatchError, StorageError
from storage.models import EmbeddingRow, ImageRow, IndexManifestRow, Meta, RunErrorRow, RunRow, SourceRow


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class ImageRecord:
    """What is stored about one distinct image, except its id (assigned on insert) and vector."""

    pixel_sha256: str
    kind: str
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
    window: str | None = None
    burned_in_annotation: bool | None = None
    labels: list[str] = field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


RECORD_FIELDS = tuple(f.name for f in fields(ImageRecord))


@dataclass(frozen=True)
class SourceRecord:
    """One file (and frame) an image was found in."""

    archive: str
    path: str
    frame_index: int
    file_sha256: str
    size: int | None
    mtime: float | None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None


SOURCE_FIELDS = tuple(f.name for f in fields(SourceRecord))


@dataclass
class FileState:
    """What the database knows of one path of an archive."""

    source_ids: list[int]
    file_sha256: str | None
    size: int | None
    mtime: float | None
    issue: FileIssue | None = None  # set when the file was skipped or failed last time (and had no source)


@dataclass
class NewImage:
    """An image to insert with its vector, and the sources it was found in."""

    record: ImageRecord
    vector: np.ndarray
    sources: list[SourceRecord]


@dataclass(frozen=True)
class ImageFilter:
    """Conditions on image metadata; every given one must hold. Text matches ignore case."""

    modality: tuple[str, ...] = ()  # any of
    body_part: tuple[str, ...] = ()  # any of
    patient_sex: str | None = None
    age_min: float | None = None
    age_max: float | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    manufacturer: str | None = None  # substring
    labels: tuple[str, ...] = ()  # all of
    description: str | None = None  # substring of the study or series description

    @property
    def empty(self) -> bool:
        return self == ImageFilter()


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


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
    size: int | None = None
    mtime: float | None = None
    file_sha256: str | None = None


def image_to_dict(row: ImageRow, sources: Sequence[SourceRow]) -> dict[str, Any]:
    data = {name: getattr(row, name) for name in RECORD_FIELDS}
    data["id"] = row.id
    data["sources"] = [{name: getattr(s, name) for name in SOURCE_FIELDS if name not in ("size", "mtime")}
                       for s in sorted(sources, key=lambda s: s.id)]
    return data


class Repository:
    """All SQL lives here. Each public method is one transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # -- manifest and meta ----------------------------------------------------------------------------
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
                    "cannot be mixed: use the same model, or build a new index generation (--new-generation)."
                )
        manifest = self.get_manifest()
        assert manifest is not None
        return manifest

    def get_meta(self, key: str) -> str | None:
        with self._sessions() as session:
            row = session.get(Meta, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._sessions() as session, session.begin():
            session.merge(Meta(key=key, value=value))

    def ensure_meta(self, key: str, value: str, explain: str) -> None:
        """Record `value` under `key` the first time; afterwards refuse a different one (StorageError)."""
        with self._sessions() as session, session.begin():
            row = session.get(Meta, key)
            if row is None:
                session.add(Meta(key=key, value=value))
            elif row.value != value:
                raise StorageError(f"{explain} (recorded {key}={row.value}, asked {key}={value})")

    # -- what is already indexed ----------------------------------------------------------------------
    def archive_state(self, archive: str) -> dict[str, FileState]:
        """path -> what is known of it: its sources, or the issue of its last attempt."""
        state: dict[str, FileState] = {}
        with self._sessions() as session:
            for source_id, path, sha, size, mtime in session.execute(
                select(SourceRow.id, SourceRow.path, SourceRow.file_sha256, SourceRow.size, SourceRow.mtime)
                .where(SourceRow.archive == archive)
            ):
                known = state.setdefault(path, FileState([], sha, size, mtime))
                known.source_ids.append(source_id)
            latest = (select(RunErrorRow.path, func.max(RunErrorRow.id).label("last"))
                      .where(RunErrorRow.archive == archive).group_by(RunErrorRow.path).subquery())
            for row in session.scalars(select(RunErrorRow).join(latest, RunErrorRow.id == latest.c.last)):
                if row.path not in state:
                    issue = FileIssue(row.archive, row.path, row.kind, row.reason, row.size, row.mtime,
                                      row.file_sha256)
                    state[row.path] = FileState([], row.file_sha256, row.size, row.mtime, issue=issue)
        return state

    def images_by_pixel_sha(self, shas: Sequence[str]) -> dict[str, int]:
        if not shas:
            return {}
        with self._sessions() as session:
            rows = session.execute(select(ImageRow.pixel_sha256, ImageRow.id)
                                   .where(ImageRow.pixel_sha256.in_(list(set(shas)))))
            return {sha: image_id for sha, image_id in rows}

    # -- writing --------------------------------------------------------------------------------------
    def write_batch(self, new_images: Sequence[NewImage], links: Sequence[tuple[SourceRecord, int]],
                    fingerprint_key: str, run_id: int | None, remove_source_ids: Sequence[int] = (),
                    touched: Sequence[tuple[int, int | None, float | None]] = ()) -> tuple[list[int], list[int]]:
        """One transaction: remove replaced sources (and images left without any), insert new images with
        their vectors and sources, link further sources to existing images, update touched sources'
        size/mtime. Returns (new image ids in order, image ids removed)."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            removed = self._remove_sources(session, remove_source_ids)
            rows = [ImageRow(**{name: getattr(n.record, name) for name in RECORD_FIELDS}, run_id=run_id,
                             indexed_at=now) for n in new_images]
            session.add_all(rows)
            session.flush()
            for row, new in zip(rows, new_images, strict=True):
                vector = np.ascontiguousarray(new.vector, dtype=np.float32)
                session.add(EmbeddingRow(image_id=row.id, fingerprint_key=fingerprint_key, vector=vector.tobytes()))
                session.add_all(self._source_row(s, row.id, run_id, now) for s in new.sources)
            session.add_all(self._source_row(s, image_id, run_id, now) for s, image_id in links)
            for source_id, size, mtime in touched:
                session.execute(update(SourceRow).where(SourceRow.id == source_id).values(size=size, mtime=mtime))
            return [row.id for row in rows], removed

    @staticmethod
    def _source_row(source: SourceRecord, image_id: int, run_id: int | None, now: datetime) -> SourceRow:
        return SourceRow(image_id=image_id, **{name: getattr(source, name) for name in SOURCE_FIELDS},
                         run_id=run_id, indexed_at=now)

    @staticmethod
    def _remove_sources(session: Session, source_ids: Sequence[int]) -> list[int]:
        if not source_ids:
            return []
        ids = list(source_ids)
        image_ids = set(session.scalars(select(SourceRow.image_id).where(SourceRow.id.in_(ids))))
        session.execute(delete(SourceRow).where(SourceRow.id.in_(ids)))
        still_used = set(session.scalars(select(SourceRow.image_id).where(SourceRow.image_id.in_(image_ids))))
        orphans = sorted(image_ids - still_used)
        if orphans:
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(orphans)))
            session.execute(delete(ImageRow).where(ImageRow.id.in_(orphans)))
        return orphans

    def remove_sources(self, source_ids: Sequence[int]) -> list[int]:
        """Delete sources; images left without any source go too. Returns the image ids removed."""
        with self._sessions() as session, session.begin():
            return self._remove_sources(session, source_ids)

    def select_sources(self, *, archive: str | None = None, path_prefix: str | None = None,
                       patient_id: str | None = None, study_uid: str | None = None) -> list[int]:
        """Source ids matching every given condition."""
        query = select(SourceRow.id)
        if archive is not None:
            query = query.where(SourceRow.archive == archive)
        if path_prefix is not None:
            query = query.where(SourceRow.path.startswith(path_prefix, autoescape=True))
        if patient_id is not None:
            query = query.where(SourceRow.patient_id == patient_id)
        if study_uid is not None:
            query = query.where(SourceRow.study_uid == study_uid)
        with self._sessions() as session:
            return list(session.scalars(query))

    def delete_images(self, ids: Sequence[int]) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(list(ids))))
            session.execute(delete(SourceRow).where(SourceRow.image_id.in_(list(ids))))
            session.execute(delete(ImageRow).where(ImageRow.id.in_(list(ids))))

    # -- reading --------------------------------------------------------------------------------------
    def get_images(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """id -> the image's stored fields with its sources, for the ids that exist."""
        if not ids:
            return {}
        wanted = [int(i) for i in ids]
        with self._sessions() as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(wanted))).all()
            sources: dict[int, list[SourceRow]] = {}
            for source in session.scalars(select(SourceRow).where(SourceRow.image_id.in_(wanted))):
                sources.setdefault(source.image_id, []).append(source)
            return {row.id: image_to_dict(row, sources.get(row.id, [])) for row in rows}

    def filter_image_ids(self, where: ImageFilter) -> np.ndarray:
        """Ids of the images matching `where`, ascending."""
        query = select(ImageRow.id)
        if where.modality:
            query = query.where(func.upper(ImageRow.modality).in_([m.upper() for m in where.modality]))
        if where.body_part:
            query = query.where(func.upper(ImageRow.body_part).in_([b.upper() for b in where.body_part]))
        if where.patient_sex:
            query = query.where(func.upper(ImageRow.patient_sex) == where.patient_sex.upper())
        if where.age_min is not None:
            query = query.where(ImageRow.patient_age >= where.age_min)
        if where.age_max is not None:
            query = query.where(ImageRow.patient_age <= where.age_max)
        if where.study_date_from is not None:
            query = query.where(ImageRow.study_date >= where.study_date_from)
        if where.study_date_to is not None:
            query = query.where(ImageRow.study_date <= where.study_date_to)
        if where.manufacturer:
            query = query.where(func.lower(ImageRow.manufacturer).like(_like(where.manufacturer), escape="\\"))
        if where.description:
            pattern = _like(where.description)
            query = query.where(func.lower(ImageRow.study_description).like(pattern, escape="\\")
                                | func.lower(ImageRow.series_description).like(pattern, escape="\\"))
        for label in where.labels:  # labels are a JSON list: match the quoted value exactly
            quoted = json.dumps(label)
            query = query.where(func.lower(cast(ImageRow.labels, Text)).like(_like(quoted), escape="\\"))
        with self._sessions() as session:
            return np.asarray(session.scalars(query.order_by(ImageRow.id)).all(), dtype=np.int64)

    def count_images(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)) or 0)

    def count_sources(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(SourceRow)) or 0)

    def image_ids(self) -> np.ndarray:
        with self._sessions() as session:
            return np.asarray(session.scalars(select(ImageRow.id)).all(), dtype=np.int64)

    def images_without_sources(self) -> list[int]:
        with self._sessions() as session:
            used = select(SourceRow.image_id)
            return list(session.scalars(select(ImageRow.id).where(ImageRow.id.not_in(used))))

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
            # a run still marked running was killed: it never finished
            session.execute(update(RunRow).where(RunRow.status == "running").values(status="killed"))
            row = RunRow(archive=archive, fingerprint_key=fingerprint_key, started_at=utcnow(), status="running")
            session.add(row)
            session.flush()
            return row.id

    def record_issues(self, run_id: int, issues: Sequence[FileIssue]) -> None:
        if not issues:
            return
        with self._sessions() as session, session.begin():
            session.add_all(RunErrorRow(run_id=run_id, archive=i.archive, path=i.path, kind=i.kind,
                                        reason=i.reason, size=i.size, mtime=i.mtime, file_sha256=i.file_sha256)
                            for i in issues)

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
            return [FileIssue(archive=r.archive, path=r.path, kind=r.kind, reason=r.reason, size=r.size,
                              mtime=r.mtime, file_sha256=r.file_sha256) for r in rows]
