"""A PACS's side of medsearch that needs no connection: its locations (``dicomweb+http(s)://...``), the
study query of a run, an instance's WADO-RS path and URL, and the viewer links of a source. The archive
itself (listing and fetching): core/sources/dicomweb.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from core.errors import ArchiveError

SCHEME_PREFIX = "dicomweb+"
SETTLED = 0.0  # mtime of an instance fetched (or judged) for good; None: fetch again next run
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_STUDY_INSTANCES, _STUDY_DATE = "00201208", "00080020"


@dataclass(frozen=True)
class DicomWebConfig:
    """How to talk to the server. Secrets are plain strings here: keep this object out of logs."""

    token: str | None = None  # bearer token
    username: str | None = None  # basic auth
    password: str | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None  # a CA file or folder (the hospital's own CA)
    timeout_s: float = 30.0
    retries: int = 3  # further attempts after a passing failure, with exponential backoff
    backoff_s: float = 1.0
    fetch_threads: int = 4
    page_size: int = 1000  # QIDO-RS results per request
    give_up_after: int = 20  # consecutive unreachable fetches before the run stops

    def __repr__(self) -> str:
        return (f"DicomWebConfig(auth={'bearer' if self.token else 'basic' if self.username else 'none'}, "
                f"verify_tls={self.verify_tls}, timeout_s={self.timeout_s}, retries={self.retries})")


@dataclass(frozen=True)
class StudyQuery:
    """Which studies to index: QIDO-RS matching keys. Empty: every study on the server."""

    study_date: str | None = None  # YYYYMMDD, YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD
    modalities: tuple[str, ...] = ()  # ModalitiesInStudy; several: one query each, results merged
    attributes: tuple[tuple[str, str], ...] = ()  # any other QIDO-RS key (keyword or tag) and value

    @property
    def complete(self) -> bool:
        """True when the query covers every study (so studies not listed are gone from the server)."""
        return self.study_date is None and not self.modalities and not self.attributes

    def describe(self) -> str:
        parts = [f"StudyDate={self.study_date}"] if self.study_date else []
        parts += [f"ModalitiesInStudy={','.join(self.modalities)}"] if self.modalities else []
        parts += [f"{key}={value}" for key, value in self.attributes]
        return " ".join(parts) or "every study"


def check_date_range(value: str) -> str:
    """A QIDO-RS date or date range from YYYYMMDD / YYYY-MM-DD dates: D, D-, -D, D-D (compact dates) or
    D..D, D.., ..D (either form). ValueError says what is accepted."""
    text = value.strip()
    if ".." in text:
        start, _, end = text.partition("..")
        bounds = [start.strip(), end.strip()]
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        bounds = [text]
    elif "-" in text:
        start, _, end = text.partition("-")
        bounds = [start.strip(), end.strip()]
    else:
        bounds = [text]
    dates = [bound.replace("-", "") for bound in bounds]
    if not any(dates) or not all(_is_date(date) for date in dates if date):
        raise ValueError(f"{value!r} is not a date or date range: use YYYYMMDD (or YYYY-MM-DD), YYYYMMDD- "
                         "(from), -YYYYMMDD (until), YYYYMMDD-YYYYMMDD, or YYYY-MM-DD..YYYY-MM-DD")
    if len(dates) == 2 and dates[0] and dates[1] and dates[0] > dates[1]:
        raise ValueError(f"{value!r}: the range ends before it starts")
    return "-".join(dates)


def _is_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


def is_dicomweb(location: str) -> bool:
    return str(location).lower().startswith(SCHEME_PREFIX)


def split_location(location: str) -> tuple[str, str]:
    """(key, base URL) of a ``dicomweb+http(s)://`` location, or ArchiveError naming what is wrong."""
    text = str(location).strip()
    if not is_dicomweb(text):
        raise ArchiveError(f"{location}: a DICOMweb location starts with dicomweb+http:// or dicomweb+https://")
    url = text[len(SCHEME_PREFIX):].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArchiveError(f"{location}: not a DICOMweb location; expected dicomweb+http://HOST:PORT/PATH, "
                           "for example dicomweb+http://pacs.example.org:8042/dicom-web")
    if parts.username or parts.password:
        raise ArchiveError(f"{parts.scheme}://{parts.hostname}: credentials do not belong in the URL (URLs are "
                           "stored and logged): set MEDSEARCH_DICOMWEB_TOKEN, or MEDSEARCH_DICOMWEB_USERNAME and "
                           "MEDSEARCH_DICOMWEB_PASSWORD")
    if parts.query or parts.fragment:
        raise ArchiveError(f"{location}: give the service root without a query; filters are options "
                           "(--study-date, --modality, --qido KEY=VALUE)")
    return SCHEME_PREFIX + url, url


def instance_path(study: str, series: str, sop: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}"


def parse_instance_path(path: str) -> tuple[str, str, str] | None:
    parts = path.split("/")
    if len(parts) == 6 and parts[0] == "studies" and parts[2] == "series" and parts[4] == "instances":
        return parts[1], parts[3], parts[5]
    return None


def instance_url(archive_key: str, path: str) -> str | None:
    """The WADO-RS URL of a source recorded from a DICOMweb archive; None for other archives."""
    if not is_dicomweb(archive_key) or parse_instance_path(path) is None:
        return None
    return f"{archive_key[len(SCHEME_PREFIX):]}/{path}"


VIEWER_FIELDS = ("study_uid", "series_uid", "sop_uid", "dicomweb_url")


def check_viewer_template(template: str) -> None:
    """ValueError unless `template` is an http(s) URL whose placeholders are all known."""
    if not template.lower().startswith(("http://", "https://")):
        raise ValueError(f"{template!r}: the viewer URL template must start with http:// or https://")
    try:
        template.format(**{name: "x" for name in VIEWER_FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{template!r}: unknown placeholder {exc}; known: "
                         + ", ".join("{" + name + "}" for name in VIEWER_FIELDS)) from None


def viewer_url(template: str | None, archive_key: str, source: Mapping[str, Any]) -> str | None:
    """The template filled in for any source with a Study Instance UID (a PACS, or a DICOM file of a
    folder or zip that the viewer's archive also holds); {dicomweb_url} is empty for files."""
    if not template or not source.get("study_uid"):
        return None
    from urllib.parse import quote

    values = {name: quote(str(source.get(name) or ""), safe="") for name in VIEWER_FIELDS}
    values["dicomweb_url"] = quote(archive_key[len(SCHEME_PREFIX):], safe="") if is_dicomweb(archive_key) else ""
    return template.format(**values)
