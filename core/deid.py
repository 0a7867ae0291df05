"""De-identification at index time: keyed pseudonyms, so one patient's images still group together."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import replace

from core.imaging.metadata import ImageMetadata

# what medsearch itself puts in `extra` (not a manifest column): kept
INTERNAL_EXTRA = ("body_part_from",)


def pseudonym(value: str | None, secret: str, kind: str) -> str | None:
    """HMAC-SHA256 of `value` under `secret`, tagged by `kind` so equal IDs of different kinds differ."""
    if value is None:
        return None
    digest = hmac.new(secret.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"anon-{digest[:24]}"


def deidentify(meta: ImageMetadata, secret: str, keep_columns: Iterable[str] = (),
               keep_reports: bool = False) -> ImageMetadata:
    """Patient IDs and accession numbers become keyed pseudonyms; manifest columns beyond the known
    fields are not stored unless allow-listed (`keep_columns`), report text only with `keep_reports`.
    Patient names and birth dates are never read from DICOM in the first place."""
    kept = set(keep_columns) | set(INTERNAL_EXTRA)
    extra = {key: value for key, value in meta.extra.items() if key in kept}
    return replace(meta, patient_id=pseudonym(meta.patient_id, secret, "patient"),
                   accession_number=pseudonym(meta.accession_number, secret, "accession"), extra=extra,
                   report_text=meta.report_text if keep_reports else None)
