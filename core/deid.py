"""De-identification at index time: keyed pseudonyms, so one patient's images still group together."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import replace

from core.metadata import ImageMetadata

# manifest columns that may carry direct identifiers are dropped when de-identifying
IDENTIFYING_COLUMN = re.compile(r"name|birth|address|phone|email|mrn|ssn|insurance", re.IGNORECASE)


def pseudonym(value: str | None, secret: str, kind: str) -> str | None:
    """HMAC-SHA256 of `value` under `secret`, tagged by `kind` so equal IDs of different kinds differ."""
    if value is None:
        return None
    digest = hmac.new(secret.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"anon-{digest[:24]}"


def deidentify(meta: ImageMetadata, secret: str) -> ImageMetadata:
    """Patient IDs and accession numbers become keyed pseudonyms; identifying extra columns are dropped.
    Patient names and birth dates are never read in the first place."""
    extra = {key: value for key, value in meta.extra.items() if not IDENTIFYING_COLUMN.search(key)}
    return replace(meta, patient_id=pseudonym(meta.patient_id, secret, "patient"),
                   accession_number=pseudonym(meta.accession_number, secret, "accession"), extra=extra)
