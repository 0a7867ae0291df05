"""Runs from a PACS: the study query of `medsearch-index run`, and the high-water mark that lets a
nightly run list only the studies dated since the last complete one.

The mark is the local date on which the last complete, unfiltered run over a DICOMweb source
started; it is stored in the index database (table meta), so it survives crashes exactly as the
index does: a run killed before it completes leaves the old mark, and the next run lists the same
studies again (whatever it had already fetched is not fetched again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from datetime import date, timedelta

from pydicom.datadict import tag_for_keyword

from core.sources.dicomweb import DicomWebArchive
from core.sources.dicomweb_locations import StudyQuery, check_date_range
from indexer.errors import IndexerError
from storage.sql.repository import Repository

logger = logging.getLogger(__name__)


def _mark_key(archive_key: str) -> str:
    return "dicomweb-mark:" + hashlib.sha256(archive_key.encode()).hexdigest()[:32]


def read_mark(repository: Repository, archive_key: str) -> date | None:
    raw = repository.get_meta(_mark_key(archive_key))
    if not raw:
        return None
    return date.fromisoformat(json.loads(raw)["date"])


def write_mark(repository: Repository, archive_key: str, day: date) -> None:
    repository.set_meta(_mark_key(archive_key), json.dumps({"date": day.isoformat()}))


def forget_mark(repository: Repository, archive_key: str) -> None:
    """When a PACS is removed from the index: no trace of it stays."""
    repository.set_meta(_mark_key(archive_key), None)


def parse_qido(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE options as QIDO-RS matching keys; IndexerError names a malformed one."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise IndexerError(f"--qido {pair!r}: expected KEY=VALUE with a DICOM keyword or tag, for example "
                               "--qido StudyDescription=*CHEST* or --qido 00081030=*CHEST*")
        key = key.strip()
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", key) and tag_for_keyword(key) is None:
            raise IndexerError(f"--qido {pair!r}: {key!r} is not a DICOM keyword or an 8-digit hex tag "
                               "(keywords are case-sensitive, for example StudyDescription, PatientID, "
                               "InstitutionName)")
        out.append((key, value.strip()))
    return tuple(out)


def build_query(study_date: str | None, modalities: tuple[str, ...], qido: tuple[str, ...]) -> StudyQuery:
    try:
        normalised = check_date_range(study_date) if study_date else None
    except ValueError as exc:
        raise IndexerError(f"--study-date: {exc}") from None
    names = tuple(m.strip().upper() for value in modalities for m in value.split(",") if m.strip())
    return StudyQuery(study_date=normalised, modalities=names, attributes=parse_qido(qido))


def apply_since(archive: DicomWebArchive, repository: Repository, since: str | None,
                lookback_days: int) -> str:
    """Narrow the archive's query to studies dated from `since` (a date, or "last": the stored mark
    less `lookback_days`). Returns a sentence saying what will be listed."""
    if since is None:
        return f"listing {archive.query.describe()}"
    if archive.query.study_date:
        raise IndexerError("--since and --study-date both set the study date: give one of them")
    if since.strip().lower() == "last":
        mark = read_mark(repository, archive.key)
        if mark is None:
            return "--since last: no complete run from this PACS yet, so every matching study is listed"
        start = mark - timedelta(days=lookback_days)
        archive.query = replace(archive.query, study_date=f"{start:%Y%m%d}-")
        return (f"--since last: studies dated from {start.isoformat()} (last complete run {mark.isoformat()}, "
                f"less {lookback_days} day(s) of look-back)")
    try:
        day = check_date_range(since)
    except ValueError:
        raise IndexerError(f"--since {since!r}: give a date (YYYYMMDD or YYYY-MM-DD) or 'last'") from None
    if "-" in day:
        raise IndexerError(f"--since {since!r}: give one date (YYYYMMDD or YYYY-MM-DD) or 'last'; for a range "
                           "use --study-date")
    archive.query = replace(archive.query, study_date=f"{day}-")
    return f"--since {since}: studies dated from {day}"


def marks_progress(archive: DicomWebArchive, narrowed: bool) -> bool:
    """Whether a complete run with this query may move the mark: it must not have been narrowed by
    anything but --since (`narrowed`: --study-date was given), and every instance must have been
    fetched (passing failures must be listed again next time)."""
    query = archive.query
    return (not narrowed and not query.modalities and not query.attributes
            and archive.stats.fetch_failures == 0 and archive.stats.studies_failed == 0)
