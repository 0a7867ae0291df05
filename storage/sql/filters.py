"""Filters on image metadata as one SQL query (the repository runs it). What they compare is indexed
(migration 0008: upper(modality), upper(body_part), study_date, and `image_labels` by label), so that a
selective filter reads its matches instead of every row; the database's planner picks the index."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import ColumnElement, Select, func, select, true

from storage.records import ImageFilter
from storage.sql.models import ImageLabelRow, ImageRow, label_key


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def filter_query(where: ImageFilter) -> Select[int]:
    """The ids of the images matching every condition of `where`, ascending. Text matches ignore case.
    Labels alone are read from the label index without the images' rows (6x at 1M: 60k ids in 17 ms)."""
    if where.labels and replace(where, labels=()).empty:
        first, *others = (label_key(label) for label in where.labels)
        query = select(ImageLabelRow.image_id.label("id")).where(ImageLabelRow.label == first)
        for key in others:  # each image's row for the next label: a seek of the primary key
            query = query.where(ImageLabelRow.image_id.in_(select(ImageLabelRow.image_id).where(
                ImageLabelRow.label == key)))
        return query.order_by(ImageLabelRow.image_id)
    return select(ImageRow.id).where(filter_condition(where)).order_by(ImageRow.id)


def filter_condition(where: ImageFilter, per_row: bool = False) -> ColumnElement[bool]:
    """Every condition of `where` on an images row (true when it has none). A label is the ids carrying
    it, read once from its index; `per_row` (for checking given rows, a few of the table): a seek of
    each row's own label instead (1,000 sampled rows at 1M: 2.3 ms, against 11.5 to read 60k ids)."""
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
    for label in where.labels:
        if per_row:
            query = query.where(select(ImageLabelRow.image_id).where(
                ImageLabelRow.image_id == ImageRow.id, ImageLabelRow.label == label_key(label)).exists())
        else:
            carrying = select(ImageLabelRow.image_id).where(ImageLabelRow.label == label_key(label))
            query = query.where(ImageRow.id.in_(carrying))
    clause = query.whereclause
    return true() if clause is None else clause
