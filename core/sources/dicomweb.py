"""A PACS as an archive: studies found with QIDO-RS, instances fetched with WADO-RS (dicomweb-client).

Location: ``dicomweb+http://HOST:PORT/dicom-web`` (or ``dicomweb+https://...``); the archive's key in
the database is that location, and each instance's path is its WADO-RS path
``studies/{study}/series/{series}/instances/{sop}``, so a source's URL is ``BASE/PATH``.

What makes reruns cheap: a DICOM instance never changes under its SOP Instance UID, so an instance
already fetched is never fetched again; and a study whose instance count on the server
(NumberOfStudyRelatedInstances) equals the number of its instances already settled in the database
is not even listed. "Settled" entries carry mtime 0.0; an instance that could not be fetched for a
passing reason (timeout, server error, connection lost) is recorded with mtime None and fetched
again next run.

Credentials come from settings (bearer token or basic auth), never from the URL: URLs are stored
and logged. TLS certificates are verified unless the configuration says otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from core.errors import ArchiveError
from core.sources.base import MAX_MEMBER_BYTES, Entry, ReadItem, SourceKind, SourceOptions, too_large
from core.sources.dicomweb_locations import (
    _SERIES_UID,
    _SOP_UID,
    _STUDY_DATE,
    _STUDY_INSTANCES,
    _STUDY_UID,
    SETTLED,
    DicomWebConfig,
    StudyQuery,
    instance_path,
    is_dicomweb,
    parse_instance_path,
    split_location,
)

logger = logging.getLogger(__name__)

_ACCEPT_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored, not transcoded
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _FetchError(Exception):
    """A request for one study or instance failed; the run goes on (see the subclasses)."""


class _UnavailableError(_FetchError):
    """A fetch failed for a passing reason (timeout, connection, 5xx): worth trying again later."""


class _TooLargeError(_FetchError):
    """An instance larger than the file size limit: refused from its declared length, or cut off once
    that many bytes arrived (a chunked answer); fetched again by a run with a higher limit."""


@dataclass
class ListingStats:
    studies: int = 0  # studies the query matched
    studies_listed: int = 0  # new or changed: their instances were listed
    studies_unchanged: int = 0  # instance counts equal to what is settled: not listed
    studies_vanished: int = 0  # matched, then gone before their instances could be listed or fetched
    studies_failed: int = 0  # could not be listed (listed again next run)
    instances_fetched: int = 0
    fetch_failures: int = 0  # passing failures: fetched again next run
    bytes_fetched: int = 0
    seconds_listing: float = 0.0
    vanished: set[str] = field(default_factory=set)


class DicomWebArchive:
    """Reads a DICOMweb service like an archive (see the module docstring)."""

    def __init__(self, location: str, config: DicomWebConfig | None = None, query: StudyQuery | None = None,
                 *, session: Any = None, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.key, self.base_url = split_location(location)
        self.max_member_bytes = max_member_bytes
        self.config = config or DicomWebConfig()
        self.query = query or StudyQuery()
        self.stats = ListingStats()
        self._client = self._make_client(session)
        self._lock = threading.Lock()
        self._consecutive_unreachable = 0
        self._listed: list[Entry] | None = None
        self._listing_errors: dict[str, str] = {}  # "studies/UID" -> why its instances could not be listed

    # -- the client ---------------------------------------------------------------------------------
    def _make_client(self, session: Any) -> Any:
        from dicomweb_client.api import DICOMwebClient
        from requests.adapters import HTTPAdapter

        config = self.config
        session = session or _Session()
        session.verify = config.ca_bundle or config.verify_tls
        if isinstance(session, _Session) and (config.ca_bundle or not config.verify_tls):
            session.pinned_verify = session.verify
        if not config.verify_tls:
            logger.warning("TLS certificate verification is OFF for %s", self.base_url)
            import urllib3  # said once here, not once per request

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if config.username:
            session.auth = (config.username, config.password or "")
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else None
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(2, config.fetch_threads))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            # permissive: real archives hold UIDs that break the standard's syntax (letters, >64 characters)
            client = DICOMwebClient(self.base_url, session=session, headers=headers, timeout=config.timeout_s,
                                    permissive_uid=True)
        except ValueError as exc:
            raise ArchiveError(f"{self.key}: {exc}") from exc
        client.set_http_retry_params(retry=False)  # retries are ours: one policy, with clear messages
        if not all(hasattr(client, name) for name in ("_http_get", "_decode_multipart_message")):
            raise ArchiveError("this dicomweb-client version lacks the request and multipart helpers medsearch "
                               "uses to fetch instances as stored: install the version pyproject.toml names")
        return client

    def _call(self, what: str, url: str, call: Callable[[], Any]) -> Any:
        """Run one request with retries on passing failures. Raises ArchiveError for failures no retry
        fixes (credentials, no DICOMweb service here, TLS) and _UnavailableError when retries ran out."""
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except requests.exceptions.SSLError as exc:
                if "certificate verify failed" not in str(exc):
                    raise ArchiveError(
                        f"{url}: the TLS handshake failed ({_short(exc)}): check that the server speaks https on "
                        "this port (\"wrong version number\" means it speaks plain http)") from exc
                raise ArchiveError(
                    f"{url}: the TLS certificate could not be verified ({_short(exc)}): set "
                    "MEDSEARCH_DICOMWEB_CA_BUNDLE to the hospital's CA file (or, for a test server only, "
                    "MEDSEARCH_DICOMWEB_VERIFY_TLS=false)") from exc
            except requests.exceptions.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status == 401:
                    raise ArchiveError(
                        f"{url}: the PACS refused the credentials (HTTP 401) while {what}: set "
                        "MEDSEARCH_DICOMWEB_TOKEN, or MEDSEARCH_DICOMWEB_USERNAME and MEDSEARCH_DICOMWEB_PASSWORD, "
                        "to an account allowed to query and retrieve") from exc
                if status == 403:
                    raise ArchiveError(f"{url}: the PACS account may not do this (HTTP 403) while {what}: ask "
                                       "its administrator for query (QIDO-RS) and retrieve (WADO-RS) rights") from exc
                if status not in _TRANSIENT_STATUS:
                    raise
                error: Exception = exc
                reason = f"HTTP {status}"
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                error, reason = exc, _short(exc)
            if attempt + 1 < attempts:
                wait = self.config.backoff_s * 2**attempt
                logger.info("%s: %s while %s; trying again in %.1f s", url, reason, what, wait)
                time.sleep(wait)
        raise _UnavailableError(f"{reason} while {what} ({attempts} attempts)") from error

    # -- listing ------------------------------------------------------------------------------------
    def _qido(self, what: str, url: str, call: Callable[[], Any]) -> list[dict[str, Any]]:
        try:
            result = self._call(what, url, call)
        except _UnavailableError as exc:
            raise ArchiveError(f"{url}: cannot reach the PACS: {exc}: check the address and port, that the "
                               "server runs, and MEDSEARCH_DICOMWEB_TIMEOUT_S; nothing was changed") from exc
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (400, 404, 405):
                raise ArchiveError(f"{url}: no DICOMweb (QIDO-RS) service answers here (HTTP {status} while "
                                   f"{what}): check the path, for example /dicom-web, and any --qido key") from exc
            raise ArchiveError(f"{url}: the PACS answered HTTP {status} while {what}") from exc
        except (ValueError, requests.exceptions.RequestException) as exc:
            raise ArchiveError(f"{url}: the PACS sent an answer that is not DICOM JSON while {what}: "
                               f"{_short(exc)}") from exc
        if not isinstance(result, list):
            raise ArchiveError(f"{url}: the PACS sent an answer that is not a list of DICOM JSON objects "
                               f"while {what}")
        return result

    def check(self) -> None:
        """One small QIDO-RS query, so that an unreachable server, refused credentials or a wrong path
        are reported before anything slow starts. Raises ArchiveError."""
        self._qido("checking the connection", f"{self.base_url}/studies",
                   lambda: self._client.search_for_studies(limit=1))

    def _studies(self) -> list[dict[str, Any]]:
        base = dict(self.query.attributes)
        if self.query.study_date:
            base["StudyDate"] = self.query.study_date
        found: dict[str, dict[str, Any]] = {}
        for modality in self.query.modalities or (None,):
            filters = dict(base) | ({"ModalitiesInStudy": modality} if modality else {})
            answers = self._qido(
                "listing studies", f"{self.base_url}/studies",
                lambda filters=filters: self._client.search_for_studies(  # type: ignore[misc]
                    search_filters=filters or None, fields=["NumberOfStudyRelatedInstances", "StudyDate"],
                    limit=self.config.page_size, get_remaining=True))
            seen: set[str] = set()
            for study in answers:
                uid = _value(study, _STUDY_UID)
                if not uid:
                    continue
                if uid in seen:
                    # one Study Instance UID twice in one answer (under two patients, which a PACS keeps
                    # apart): neither count is the study's, so its instances are always listed
                    found[uid] = {_STUDY_UID: study[_STUDY_UID], _STUDY_DATE: study.get(_STUDY_DATE)}
                else:
                    found.setdefault(uid, study)  # several --modality queries may each find it
                seen.add(uid)
        return sorted(found.values(), key=lambda s: (_value(s, _STUDY_DATE) or "", _value(s, _STUDY_UID)))

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        """Every instance of every study the query matches. Known instances keep their known size and
        time (they are not fetched again); studies whose settled instances are all there are not listed."""
        started = time.perf_counter()
        known = known or {}
        by_study: dict[str, list[Entry]] = defaultdict(list)
        for path, entry in known.items():
            parsed = parse_instance_path(path)
            if parsed:
                by_study[parsed[0]].append(entry)
        studies = self._studies()
        self.stats.studies = len(studies)
        result: list[Entry] = []
        for study in studies:
            uid = _value(study, _STUDY_UID) or ""
            count = _int(_value(study, _STUDY_INSTANCES))
            mine = by_study.get(uid, [])
            settled = sum(1 for entry in mine if entry.mtime is not None)
            if count is not None and count == settled:
                self.stats.studies_unchanged += 1
                result.extend(mine)
                continue
            try:
                instances = self._instances(uid)
            except _ListingError as exc:  # this study cannot be listed now: say so, go on with the others
                self.stats.studies_failed += 1
                path = f"studies/{uid}"
                self._listing_errors[path] = str(exc)
                result.extend(mine)
                result.append(Entry(path, 0, None))
                continue
            if instances is None:  # vanished since the study list: keep what we know
                result.extend(mine)
                continue
            self.stats.studies_listed += 1
            for series, sop in instances:
                path = instance_path(uid, series, sop)
                result.append(known.get(path) or Entry(path, 0, None))
        self.stats.seconds_listing = time.perf_counter() - started
        self._listed = result
        logger.info("%s: %d studies match (%s): %d new or changed, %d unchanged", self.key, len(studies),
                    self.query.describe(), self.stats.studies_listed, self.stats.studies_unchanged)
        return result

    def _instances(self, study: str) -> list[tuple[str, str]] | None:
        """(series, sop) UIDs of a study's instances; None when the study is gone. Raises _ListingError
        when this study cannot be listed (and ArchiveError when nothing can: credentials, TLS)."""
        if "/" in study:
            raise _ListingError(f"the Study Instance UID {study!r} contains '/': it cannot be addressed by DICOMweb")
        url = f"{self.base_url}/studies/{study}/instances"
        what = f"listing the instances of study {study}"
        try:
            answers = self._call(what, url, lambda: self._client.search_for_instances(
                study_instance_uid=study, fields=["SeriesInstanceUID"], limit=self.config.page_size,
                get_remaining=True))
        except _UnavailableError as exc:
            raise _ListingError(f"{exc}; it will be listed again next run") from exc
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status not in (404, 410):
                raise _ListingError(f"the PACS answered HTTP {status} while {what}") from exc
            answers = []
        except (ValueError, TypeError, KeyError, requests.exceptions.RequestException) as exc:
            raise _ListingError(f"the PACS sent an answer that cannot be read while {what}: {_short(exc)}") from exc
        pairs = [(_value(a, _SERIES_UID) or "", _value(a, _SOP_UID) or "") for a in answers]
        pairs = [(series, sop) for series, sop in pairs if series and sop and "/" not in series + sop]
        if not pairs:
            logger.warning("%s: study %s was listed but has no instances any more (deleted or moved during "
                           "the run)", self.key, study)
            self.stats.studies_vanished += 1
            self.stats.vanished.add(study)
            return None
        return sorted(pairs)

    # -- fetching -----------------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        """One instance's bytes as stored on the server. OSError (with the reason) when it cannot be had."""
        parsed = parse_instance_path(path)
        if parsed is None:
            raise OSError(f"{path}: not an instance path (studies/S/series/R/instances/I)")
        try:
            return self._fetch(*parsed)
        except (_FetchError, ArchiveError) as exc:
            raise OSError(str(exc)) from exc

    random_access = False

    def local_path(self, path: str) -> str | None:
        return None

    def _fetch(self, study: str, series: str, sop: str) -> bytes:
        """The instance's bytes exactly as the PACS stores them (no transcoding, no re-encoding), so that
        files without a file meta header, which a viewer still reads, are read here as from a folder."""
        url = f"{self.base_url}/{instance_path(study, series, sop)}"
        try:
            parts = self._call("fetching an instance", url, lambda: self._retrieve_raw(url))
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (404, 410):
                raise _GoneError(f"the PACS no longer has this instance (HTTP {status}: deleted or moved after "
                                 "it was listed)") from exc
            raise _CorruptError(f"the PACS answered HTTP {status}") from exc
        except (ValueError, requests.exceptions.RequestException) as exc:
            raise _CorruptError(f"the PACS sent an answer that is not a DICOM instance: {_short(exc)}") from exc
        if len(parts) != 1 or not parts[0]:
            raise _CorruptError(f"the PACS sent {len(parts)} parts for one instance")
        return bytes(parts[0])

    def _retrieve_raw(self, url: str) -> list[bytes]:
        """WADO-RS Retrieve Instance through dicomweb-client's request and multipart decoding, without
        its dcmread (which refuses files that lack a file meta header)."""
        response = self._client._http_get(url, headers={"Accept": _ACCEPT_STORED}, stream=True)
        response._content = self._bounded_body(response)  # what the decoding below reads
        if response.headers.get("Content-Type", "").startswith("application/dicom"):
            return [response.content]  # a server that sends the part bare (tolerated by the client too)
        return list(self._client._decode_multipart_message(response, stream=False))

    def _bounded_body(self, response: Any) -> bytes:
        """The answer's body, at most the file size limit: refused before reading when its declared
        length is larger, cut off when more arrives than that (memory bounded either way)."""
        limit = self.max_member_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            response.close()
            raise _TooLargeError(str(too_large(int(declared), limit)))
        body = bytearray()
        for chunk in response.iter_content(1 << 20):
            body += chunk
            if len(body) > limit:
                response.close()
                raise _TooLargeError(str(too_large(len(body), limit)).replace(" bytes", " bytes or more", 1))
        return bytes(body)

    def fetch(self, entry: Entry) -> ReadItem:
        """One instance: settled (mtime 0.0) once fetched for good or found corrupt; a passing failure
        leaves it to fetch again next run. ArchiveError when the PACS stopped answering altogether."""
        if entry.path in self._listing_errors:
            return Entry(entry.path, 0, None), OSError(f"cannot list this study: {self._listing_errors[entry.path]}")
        study, series, sop = parse_instance_path(entry.path) or ("", "", "")
        if study in self.stats.vanished:
            return Entry(entry.path, 0, None), OSError("the study was removed from the PACS during the run")
        try:
            data = self._fetch(study, series, sop)
        except _UnavailableError as exc:
            with self._lock:
                self._consecutive_unreachable += 1
                self.stats.fetch_failures += 1
                stop = self._consecutive_unreachable >= self.config.give_up_after
            if stop:
                raise ArchiveError(f"{self.base_url}: the PACS stopped answering ({exc}; {self.config.give_up_after} "
                                   "fetches in a row failed): everything fetched so far is kept; rerun to "
                                   "continue") from exc
            return Entry(entry.path, 0, None), OSError(f"{exc}; it will be fetched again next run")
        except _TooLargeError as exc:
            with self._lock:
                self._consecutive_unreachable = 0
            return Entry(entry.path, 0, None), OSError(str(exc))
        except _GoneError as exc:
            if self._study_gone(study):
                return Entry(entry.path, 0, None), OSError("the study was removed from the PACS during the run")
            return Entry(entry.path, 0, None), OSError(str(exc))
        except _CorruptError as exc:
            with self._lock:
                self._consecutive_unreachable = 0
            return Entry(entry.path, 0, SETTLED), OSError(str(exc))
        with self._lock:
            self._consecutive_unreachable = 0
            self.stats.instances_fetched += 1
            self.stats.bytes_fetched += len(data)
        return Entry(entry.path, len(data), SETTLED), data

    def _study_gone(self, study: str) -> bool:
        with self._lock:
            if study in self.stats.vanished:
                return True
        try:
            answers = self._qido(f"checking study {study}", f"{self.base_url}/studies",
                                 lambda: self._client.search_for_studies(search_filters={"StudyInstanceUID": study}))
        except ArchiveError:
            return False
        if answers:
            return False
        with self._lock:
            if study not in self.stats.vanished:
                self.stats.vanished.add(study)
                self.stats.studies_vanished += 1
                logger.warning("%s: study %s was removed from the PACS during the run", self.key, study)
        return True

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        """Each entry of the last listing (a new one if none) in order with its bytes or the reason it
        could not be fetched; None for entries not wanted. Fetches run on `fetch_threads` threads with a
        bounded read-ahead."""
        items = self._listed if self._listed is not None else self.entries()
        ahead: deque[tuple[Entry, Future[ReadItem] | None]] = deque()
        limit = max(1, self.config.fetch_threads) * 4
        with ThreadPoolExecutor(max_workers=max(1, self.config.fetch_threads),
                                thread_name_prefix="dicomweb-fetch") as pool:
            try:
                for entry in items:
                    take = wanted is None or wanted(entry)
                    ahead.append((entry, pool.submit(self.fetch, entry) if take else None))
                    while len(ahead) > limit or (ahead and ahead[0][1] is None):
                        yield _settle(ahead.popleft())
                while ahead:
                    yield _settle(ahead.popleft())
            finally:
                for _, future in ahead:
                    if future is not None:
                        future.cancel()


class _Session(requests.Session):
    """A session whose configured CA bundle (or verification off) is not overridden by
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment, as plain requests would do; proxies from
    the environment still apply."""

    pinned_verify: bool | str | None = None

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
                                   ) -> dict[str, Any]:
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.pinned_verify is not None and verify is None:
            merged["verify"] = self.pinned_verify
        return merged


class _ListingError(_FetchError):
    pass


class _GoneError(_FetchError):
    pass


class _CorruptError(_FetchError):
    pass


def _settle(item: tuple[Entry, Future[ReadItem] | None]) -> ReadItem:
    entry, future = item
    return (entry, None) if future is None else future.result()


def _value(item: Mapping[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _short(exc: BaseException) -> str:
    text = str(exc)
    for pattern in ("Connection refused", "timed out", "Name or service not known", "certificate verify failed",
                    "wrong version number"):
        if pattern in text:
            return pattern.lower()
    return text if len(text) < 200 else text[:200] + "..."


def _open(location: str, options: SourceOptions) -> DicomWebArchive:
    return DicomWebArchive(location, options.dicomweb, options.query, max_member_bytes=options.max_member_bytes)


KIND = SourceKind("dicomweb", is_dicomweb, _open, priority=10)
