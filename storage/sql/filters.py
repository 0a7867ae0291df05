"""Filters on image metadata as one SQL query (the repository runs it)."""

from __future__ import annotations

import json

from sqlalchemy import ColumnElement, Select, Text, cast, func, select, true

from storage.records import ImageFilter
from storage.sql.models import ImageRow


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def filter_query(where: ImageFilter) -> Select[int]:
    """The ids of the images matching every condition of `where`, ascending. Text matches ignore case."""
    return select(ImageRow.id).where(filter_condition(where)).order_by(ImageRow.id)


def filter_condition(where: ImageFilter) -> ColumnElement[bool]:
    """Every condition of `where` on an images row (true when it has none)."""
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
        query = query.where(func.lower(cast(ImageRow.labels, Text)).like(_like(json.dumps(label)), escape="\\"))
    clause = query.whereclause
    return true() if clause is None else clause
