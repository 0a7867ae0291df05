"""What each role sees of an image: clinicians and admins everything; researchers an allow-list.

Researchers (MEDSEARCH_RESEARCHER_FIELDS, default RESEARCHER_FIELDS) see only allow-listed metadata
fields; every identifier (patient ID, accession number, study/series/SOP UIDs) is always replaced by
a keyed pseudonym, stable so that one patient's or study's images still group together; ages from 90
on read as 90; `extra` keeps only columns allow-listed as `extra.NAME`; a source shows neither the
archive's location (a pseudonym instead) nor UIDs inside a PACS path, and no link into the PACS.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from core.deid import pseudonym
from core.imaging.metadata import METADATA_FIELDS, check_field_names
from core.imaging.metadata import RESEARCHER_DEFAULT_FIELDS as RESEARCHER_FIELDS
from core.sources.dicomweb_locations import is_dicomweb, parse_instance_path
from storage.records import Metadata

IDENTIFIERS = {"patient_id": "patient", "accession_number": "accession", "study_uid": "study",
               "series_uid": "series", "sop_uid": "sop"}
# filters that reveal a field's values through what they match
FILTER_FIELDS = {"modality": ("modality",), "body_part": ("body_part",), "patient_sex": ("patient_sex",),
                 "age_min": ("patient_age",), "age_max": ("patient_age",), "study_date_from": ("study_date",),
                 "study_date_to": ("study_date",), "manufacturer": ("manufacturer",), "labels": ("labels",),
                 "description": ("study_description", "series_description"),
                 "assertion": ("report_text", "study_description", "series_description")}
AGE_CAP = 90.0


class Redactor:
    def __init__(self, secret: str, researcher_fields: Iterable[str] = RESEARCHER_FIELDS) -> None:
        self.secret = secret
        allowed = set(check_field_names(researcher_fields))
        self.fields = {n for n in allowed if n in METADATA_FIELDS} - set(IDENTIFIERS)
        self.extra = {n.removeprefix("extra.") for n in allowed if n.startswith("extra.")}

    def pseudonym(self, value: str | None, kind: str) -> str | None:
        return pseudonym(value, self.secret, kind)

    def forbidden_filters(self, given: Iterable[str]) -> list[str]:
        """Filters a researcher may not use: they test fields the allow-list hides."""
        return [name for name in given if not set(FILTER_FIELDS.get(name, ())) <= self.fields]

    def metadata(self, meta: Metadata) -> dict[str, Any]:
        """A researcher's view of the metadata: allow-listed values, pseudonymised identifiers."""
        shown: dict[str, Any] = {}
        for item in fields(Metadata):
            value = getattr(meta, item.name)
            if item.name in IDENTIFIERS:
                shown[item.name] = self.pseudonym(value, IDENTIFIERS[item.name])
            elif item.name == "extra":
                shown["extra"] = {k: v for k, v in (value or {}).items() if k in self.extra}
            elif item.name in self.fields:
                shown[item.name] = min(value, AGE_CAP) if item.name == "patient_age" and value else value
        return shown

    def source(self, source: dict[str, Any]) -> dict[str, Any]:
        """A researcher's view of one source: the path inside its archive, no location, no links."""
        archive = str(source.get("archive", ""))
        shown = {**source, "url": None, "viewer_url": None,
                 "archive": self.pseudonym(archive, "archive") or ""}
        for name, kind in IDENTIFIERS.items():
            if name in shown:
                shown[name] = self.pseudonym(shown[name], kind)
        parsed = parse_instance_path(str(source.get("path", ""))) if is_dicomweb(archive) else None
        if parsed is not None:
            study, series, sop = (self.pseudonym(uid, kind) for uid, kind in zip(parsed, ("study", "series", "sop"),
                                                                                  strict=True))
            shown["path"] = f"studies/{study}/series/{series}/instances/{sop}"
        return shown
