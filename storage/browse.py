"""Browsing the index like a viewer (part of storage.repository.Repository): a study's series with their
counts, a series' images in instance order, and the counts of matching images per value (facets)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, extract, func, select, true
from sqlalchemy.orm import Session, sessionmaker

from storage.db import database_errors
from storage.filters import filter_query
from storage.models import ImageRow, SourceRow
from storage.records import ImageFilter

FACET_FIELDS = ("modality", "body_part", "patient_sex", "year")


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str | None
    description: str | None
    modality: str | None
    images: int
    first_image_id: int


@dataclass(frozen=True)
class SeriesImage:
    image_id: int
    instance_number: int | None
    frame_index: int
    frames: int | None


class BrowseMixin:
    engine: Engine
    _sessions: sessionmaker[Session]

    def study_series(self, study_uid: str, patient_id: str | None) -> list[SeriesSummary]:
        """The series of one patient's study, in series order (by their first image)."""
        query = (select(ImageRow.series_uid, func.min(ImageRow.series_description), func.min(ImageRow.modality),
                        func.count(ImageRow.id), func.min(ImageRow.id))
                 .where(ImageRow.study_uid == study_uid, ImageRow.patient_id.is_(None) if patient_id is None
                        else ImageRow.patient_id == patient_id)
                 .group_by(ImageRow.series_uid).order_by(func.min(ImageRow.id)))
        with database_errors(self.engine), self._sessions() as session:
            return [SeriesSummary(uid, description, modality, int(count), int(first))
                    for uid, description, modality, count, first in session.execute(query)]

    def study_dates(self, where: ImageFilter) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, study date as a day number, -1 where unknown) of the images matching `where`:
        what ordering results newest or oldest first needs, in one query."""
        ids = filter_query(where).subquery()
        query = select(ImageRow.id, ImageRow.study_date).where(ImageRow.id.in_(select(ids.c.id))).order_by(ImageRow.id)
        with database_errors(self.engine), self._sessions() as session:
            rows = session.execute(query).all()
        return (np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                np.fromiter((r[1].toordinal() if r[1] else -1 for r in rows), dtype=np.int64, count=len(rows)))

    def series_images(self, series_uid: str, patient_id: str | None, limit: int = 5000) -> list[SeriesImage]:
        """One patient's images of a series in instance order (then frame), at most `limit`."""
        first_frame = (select(SourceRow.image_id, func.min(SourceRow.frame_index).label("frame"))
                       .group_by(SourceRow.image_id).subquery())
        query = (select(ImageRow.id, ImageRow.instance_number, first_frame.c.frame, ImageRow.frames)
                 .join(first_frame, first_frame.c.image_id == ImageRow.id)
                 .where(ImageRow.series_uid == series_uid, ImageRow.patient_id.is_(None) if patient_id is None
                        else ImageRow.patient_id == patient_id)
                 .order_by(ImageRow.instance_number.is_(None), ImageRow.instance_number, first_frame.c.frame,
                           ImageRow.id).limit(limit))
        with database_errors(self.engine), self._sessions() as session:
            return [SeriesImage(int(i), n, int(f or 0), frames) for i, n, f, frames in session.execute(query)]

    def study_counts(self, cases: Sequence[tuple[str | None, str]]) -> dict[tuple[str | None, str], tuple[int, int]]:
        """(patient id, study uid) -> (images, series) of that patient's study, for the cases asked."""
        studies = sorted({study for _, study in cases})
        if not studies:
            return {}
        query = (select(ImageRow.patient_id, ImageRow.study_uid, func.count(), func.count(func.distinct(
            ImageRow.series_uid))).where(ImageRow.study_uid.in_(studies))
            .group_by(ImageRow.patient_id, ImageRow.study_uid))
        wanted = set(cases)
        with database_errors(self.engine), self._sessions() as session:
            rows = session.execute(query).all()
        return {(patient, str(study)): (int(images), max(1, int(series)))
                for patient, study, images, series in rows if (patient, study) in wanted}

    def count_matching(self, where: ImageFilter, exclude: Sequence[int] = ()) -> int:
        """How many images match `where`, leaving out the ids `exclude`."""
        with database_errors(self.engine), self._sessions() as session:
            return int(session.scalar(select(func.count()).where(_matching(where, exclude))) or 0)

    def count_groups(self, where: ImageFilter, group_by: str, exclude: Sequence[int] = (),
                     among: np.ndarray | None = None) -> int:
        """How many studies (or patients) the matching images (or the ids `among`) belong to; an image
        without the identifier counts as its own group, as search's grouping does."""
        column = ImageRow.study_uid if group_by == "study" else ImageRow.patient_id
        if among is not None:
            groups = {value if value is not None else f"image:{i}" for i, value in self._values(among, [column])}
            return len(groups)
        matching = _matching(where, exclude)
        with database_errors(self.engine), self._sessions() as session:
            named = session.scalar(select(func.count(func.distinct(column))).where(matching, column.is_not(None)))
            unnamed = session.scalar(select(func.count()).where(matching, column.is_(None)))
            return int(named or 0) + int(unnamed or 0)

    def facets(self, where: ImageFilter, names: Sequence[str] = FACET_FIELDS, exclude: Sequence[int] = (),
               among: np.ndarray | None = None) -> dict[str, dict[str, int]]:
        """For each field name, how many of the matching images (or of the ids `among`) hold each value,
        most first."""
        columns = [FACET_COLUMNS[name] for name in names]
        if among is not None:
            counts: dict[str, Counter[str]] = {name: Counter() for name in names}
            for _, *values in self._values(among, columns):
                for name, value in zip(names, values, strict=True):
                    if value is not None:
                        counts[name][_facet_value(name, value)] += 1
            return {name: dict(counter.most_common()) for name, counter in counts.items()}
        matching = _matching(where, exclude)
        found: dict[str, dict[str, int]] = {}
        with database_errors(self.engine), self._sessions() as session:
            for name, column in zip(names, columns, strict=True):
                rows = session.execute(select(column, func.count()).where(matching).group_by(column)
                                       .order_by(func.count().desc(), column))
                found[name] = {_facet_value(name, value): int(n) for value, n in rows if value is not None}
        return found

    def _values(self, ids: np.ndarray, columns: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """(id, *column values) of the images `ids`, 10,000 at a time."""
        for start in range(0, len(ids), 10_000):
            chunk = [int(i) for i in ids[start:start + 10_000]]
            with database_errors(self.engine), self._sessions() as session:
                yield from session.execute(select(ImageRow.id, *columns).where(ImageRow.id.in_(chunk)))


FACET_COLUMNS: dict[str, Any] = {"modality": ImageRow.modality, "body_part": ImageRow.body_part,
                                 "patient_sex": ImageRow.patient_sex, "year": extract("year", ImageRow.study_date)}


def _matching(where: ImageFilter, exclude: Sequence[int]) -> ColumnElement[bool]:
    condition = ImageRow.id.in_(select(filter_query(where).subquery().c.id)) if not where.empty else true()
    return condition & ImageRow.id.not_in([int(i) for i in exclude]) if exclude else condition


def _facet_value(name: str, value: Any) -> str:
    return str(int(value)) if name == "year" else str(value)
