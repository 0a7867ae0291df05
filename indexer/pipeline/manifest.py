"""The optional manifest CSV of an archive: metadata for images that carry none (PNG, JPEG).

A file named `manifest.csv` at the archive's root (or one given with --manifest) with a header row.
Required column: `path` (the image's path inside the archive, forward slashes). Known columns are the
metadata fields a manifest may set (core.imaging.metadata.MANIFEST_FIELDS), each parsed by its type: text,
numbers (`patient_age`, `instance_number`), dates YYYY-MM-DD (`study_date`), yes/no
(`burned_in_annotation`), `labels` (several separated by `;` or `|`) and `report` (or `report_text`).
Every other column is kept in the image's `extra`. For DICOM images the header wins for the fields it
fills; labels, report and extras are added.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from core.imaging.metadata import MANIFEST_FIELDS, ImageMetadata
from indexer.errors import ManifestError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
ALIASES = {"report": "report_text", "file": "path", "filename": "path"}
TRUE, FALSE = {"yes", "y", "true", "1"}, {"no", "n", "false", "0"}


def _boolean(value: str) -> bool:
    if value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise ValueError("expected yes or no")


# how each column a manifest may set is read: from the field's type in ImageMetadata
_TYPES = typing.get_type_hints(ImageMetadata)
PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    name: next((parser, what) for kind, parser, what in (
        (float, float, "a number"), (int, int, "a whole number"), (date, date.fromisoformat, "YYYY-MM-DD"),
        (bool, _boolean, "yes or no"), (str, str, "text")) if kind in typing.get_args(_TYPES[name]))
    for name in MANIFEST_FIELDS if name not in ("labels", "extra")}


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
            elif name == "labels":
                row.labels = [label.strip() for label in re.split(r"[;|]", value) if label.strip()]
            elif name == "report_text":
                row.report_text = value
            elif name in PARSERS:
                parse, what = PARSERS[name]
                try:
                    row.values[name] = parse(value)
                except ValueError as exc:
                    raise ManifestError(f"{source} line {line}: {name} {value!r} is not {what}") from exc
            else:
                row.extra[original.strip()] = value
        if not path:
            raise ManifestError(f"{source} line {line}: empty 'path'")
        if path in rows:
            raise ManifestError(f"{source} line {line}: {path} is listed twice")
        rows[path] = row
    return rows
