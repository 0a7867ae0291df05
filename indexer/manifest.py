"""The optional manifest CSV of an archive: metadata for images that carry none (PNG, JPEG).

A file named `manifest.csv` at the archive's root (or one given with --manifest) with a header row.
Required column: `path` (the image's path inside the archive, forward slashes). Known columns:
`patient_id`, `patient_sex`, `patient_age`, `modality`, `body_part`, `study_date` (YYYY-MM-DD),
`study_description`, `series_description`, `study_uid`, `series_uid`, `labels` (several separated
by `;` or `|`), `report` (or `report_text`). Every other column is kept in the image's `extra`.
For DICOM images the header wins for the fields it fills; labels, report and extras are added.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from indexer.errors import ManifestError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
TEXT_COLUMNS = ("patient_id", "patient_sex", "modality", "body_part", "study_description",
                "series_description", "study_uid", "series_uid")
ALIASES = {"report": "report_text", "file": "path", "filename": "path"}


@dataclass
class ManifestRow:
    values: dict[str, Any] = field(default_factory=dict)  # ImageMetadata field -> value
    labels: list[str] = field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def parse_manifest(data: bytes, source: str) -> dict[str, ManifestRow]:
    """path -> row. Raises ManifestError naming the file, line and column of any problem."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not UTF-8 text ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ManifestError(f"{source}: empty file, expected a header row with a 'path' column")
    columns = {name: ALIASES.get(name.strip().lower(), name.strip().lower()) for name in reader.fieldnames}
    if "path" not in columns.values():
        raise ManifestError(f"{source}: no 'path' column (columns: {', '.join(reader.fieldnames)})")
    rows: dict[str, ManifestRow] = {}
    for line, raw in enumerate(reader, start=2):
        row = ManifestRow()
        path = ""
        for original, name in columns.items():
            value = (raw.get(original) or "").strip()
            if name == "path":
                path = value.replace("\\", "/").removeprefix("./")
            elif not value:
                continue
            elif name in TEXT_COLUMNS:
                row.values[name] = value
            elif name == "patient_age":
                try:
                    row.values[name] = float(value)
                except ValueError as exc:
                    raise ManifestError(f"{source} line {line}: patient_age {value!r} is not a number") from exc
            elif name == "study_date":
                try:
                    row.values[name] = date.fromisoformat(value)
                except ValueError as exc:
                    raise ManifestError(f"{source} line {line}: study_date {value!r} is not YYYY-MM-DD") from exc
            elif name == "labels":
                row.labels = [label.strip() for label in re.split(r"[;|]", value) if label.strip()]
            elif name == "report_text":
                row.report_text = value
            else:
                row.extra[original.strip()] = value
        if not path:
            raise ManifestError(f"{source} line {line}: empty 'path'")
        if path in rows:
            raise ManifestError(f"{source} line {line}: {path} is listed twice")
        rows[path] = row
    return rows
