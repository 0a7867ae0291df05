"""Browsing the index like a viewer (part of storage.sql.repository.Repository): a study's series with their
counts, a series' images in instance order, and the counts of matching images per value (facets)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, Select, case, extract, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.records import ImageFilter
from storage.sql.db import database_errors
from storage.sql.filters import filter_condition, filter_query
from storage.sql.models import ImageRow, SourceRow

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
            counted = select(func.count()).select_from(ImageRow).where(_direct(where, exclude))
            return int(session.scalar(counted) or 0)

    def count_matching_within(self, where: ImageFilter, exclude: Sequence[int], rows: int) -> tuple[int, bool]:
        """(how many of the first `rows` images by id match `where`, whether those were all the images): a
        count that costs `rows` however rare the matches are, a lower bound of the total when not all."""
        with database_errors(self.engine), self._sessions() as session:
            low, high = session.execute(_id_range()).one()
            if low is None:
                return 0, True
            bound = int(low) + rows - 1
            counted = select(func.count()).select_from(ImageRow).where(_direct(where, exclude, per_row=True),
                                                                       ImageRow.id <= bound)
            return int(session.scalar(counted) or 0), bound >= int(high)

    def filter_share(self, where: ImageFilter, sample: int = 1000, seed: int = 0) -> float | None:
        """The share of the images that match `where`, estimated on `sample` ids drawn between the smallest
        and the largest id (a cost of `sample` rows); None when there are no images to draw."""
        with database_errors(self.engine), self._sessions() as session:
            low, high = session.execute(_id_range()).one()
            if low is None:
                return None
            drawn = np.unique(np.random.default_rng(seed).integers(int(low), int(high) + 1, size=sample))
            matches = case((filter_condition(where, per_row=True), 1), else_=0)
            present, matching = session.execute(select(func.count(), func.sum(matches))
                                                .where(self._id_in(drawn.tolist()))).one()
        return int(matching or 0) / int(present) if present else None

    def matching_among(self, where: ImageFilter, ids: Sequence[int]) -> set[int]:
        """Which of `ids` match `where` (one query over those rows, however many images there are)."""
        found: set[int] = set()
        with database_errors(self.engine), self._sessions() as session:
            for chunk in _chunks(np.asarray(ids, dtype=np.int64)):
                found.update(session.scalars(select(ImageRow.id).where(self._id_in(chunk),
                                                                      filter_condition(where, per_row=True))))
        return found

    def count_groups(self, where: ImageFilter, group_by: str, exclude: Sequence[int] = (),
                     among: np.ndarray | None = None, limit: int | None = None) -> int:
        """How many studies (or patients) the matching images (or the ids `among`) belong to; an image
        without the identifier counts as its own group, as search's grouping does. With `limit`, the
        groups of the first `limit` matching images (by id) only: a lower bound that costs `limit`."""
        column = ImageRow.study_uid if group_by == "study" else ImageRow.patient_id
        with database_errors(self.engine), self._sessions() as session:
            if among is not None:
                named: set[Any] = set()
                unnamed = 0
                for chunk in _chunks(among if limit is None else among[:limit]):
                    rows = session.execute(select(column, func.count()).where(self._id_in(chunk))
                                           .group_by(column)).all()
                    named.update(value for value, _ in rows if value is not None)
                    unnamed += sum(int(n) for value, n in rows if value is None)
                return len(named) + unnamed
            first = select(column.label("g")).where(_direct(where, exclude)).order_by(ImageRow.id)
            first = first.limit(limit) if limit is not None else first
            groups = first.subquery()
            counted = session.execute(select(func.count(func.distinct(groups.c.g)),
                                             func.count() - func.count(groups.c.g))).one()
            return int(counted[0] or 0) + int(counted[1] or 0)

    def _id_in(self, ids: list[int]) -> ColumnElement[bool]:
        """`id IN ids`, the ids bound as one JSON parameter in SQLite (binding thousands of parameters
        costs more than the query)."""
        if self.engine.dialect.name != "sqlite":
            return ImageRow.id.in_(ids)
        values = func.json_each(json.dumps(ids)).table_valued("value")
        return ImageRow.id.in_(select(values.c.value))

    def facets(self, where: ImageFilter, names: Sequence[str] = FACET_FIELDS, exclude: Sequence[int] = (),
               among: np.ndarray | None = None, limit: int | None = None) -> dict[str, dict[str, int]]:
        """For each field name, how many of the matching images (or of the ids `among`) hold each value,
        most first. With `limit`, counted over the first `limit` matching images (by id) only: each count
        a lower bound, at a cost of `limit` rows however many match."""
        counts: dict[str, Counter[str]] = {name: Counter() for name in names}
        with database_errors(self.engine), self._sessions() as session:
            if among is not None:
                chosen = among if limit is None else among[:limit]
                parts: list[ColumnElement[bool]] = [self._id_in(chunk) for chunk in _chunks(chosen)]
            else:
                parts = [_direct(where, exclude)]
            for part in parts:  # one pass: the counts of each combination of values, summed per field
                first = select(*(FACET_COLUMNS[name].label(name) for name in names)).where(part).order_by(ImageRow.id)
                rows = (first.limit(limit) if limit is not None and among is None else first).subquery()
                columns = [rows.c[name] for name in names]
                for *values, n in session.execute(select(*columns, func.count()).group_by(*columns)):
                    for name, value in zip(names, values, strict=True):
                        if value is not None:
                            counts[name][_facet_value(name, value)] += int(n)
        return {name: dict(sorted(counter.items(), key=lambda kv: (-kv[1], _order(name, kv[0]))))
                for name, counter in counts.items()}



FACET_COLUMNS: dict[str, Any] = {"modality": ImageRow.modality, "body_part": ImageRow.body_part,
                                 "patient_sex": ImageRow.patient_sex, "year": extract("year", ImageRow.study_date)}


def _direct(where: ImageFilter, exclude: Sequence[int], per_row: bool = False) -> ColumnElement[bool]:
    """The conditions on the row itself (a label's ids are read once, uncorrelated, or with `per_row` a
    seek of each row's label: a scan can stop at a limit)."""
    condition = filter_condition(where, per_row)
    return condition & ImageRow.id.not_in([int(i) for i in exclude]) if exclude else condition


def _id_range() -> Select[Any]:
    """(smallest, largest) image id as two seeks: SQLite answers min() and max() in one select by
    scanning every row (its min/max shortcut takes one aggregate alone)."""
    return select(select(func.min(ImageRow.id)).scalar_subquery(), select(func.max(ImageRow.id)).scalar_subquery())


def _chunks(ids: np.ndarray, size: int = 10_000) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield [int(i) for i in ids[start:start + size]]


def _order(name: str, value: str) -> Any:
    return int(value) if name == "year" else value


def _facet_value(name: str, value: Any) -> str:
    return str(int(value)) if name == "year" else str(value)
