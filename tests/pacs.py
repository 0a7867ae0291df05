"""A real PACS for tests: Orthanc with its DICOMweb plugin on loopback, and a fault-injecting HTTP
proxy in front of it (an authenticating gateway, a slow or failing link, a study deleted mid-run).

Orthanc comes from the Debian packages `orthanc` and `orthanc-dicomweb` (.ci/run installs them);
tests skip, saying so, where they are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "medsearch", "orthanc-test-password"


def orthanc_missing() -> str | None:
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)"
    if not PLUGIN.exists():
        return f"the Orthanc DICOMweb plugin is missing ({PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc process with its own storage in `folder`, basic auth on, DICOMweb at /dicom-web."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.auth = (USER, PASSWORD)
        config = {
            "Name": "medsearch-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "HttpPort": self.port, "DicomServerEnabled": False,
            "DicomPort": free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpCompressionEnabled": False,
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config))
        self._log = (folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def upload(self, path: Path | bytes) -> dict:
        data = path if isinstance(path, bytes) else path.read_bytes()
        answer = requests.post(f"{self.url}/instances", data=data, auth=self.auth, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def instances(self) -> list[tuple[str, str, str]]:
        """(study, series, sop) UIDs of every instance Orthanc holds, through its own REST API."""
        found = []
        for orthanc_id in requests.get(f"{self.url}/instances", auth=self.auth, timeout=30).json():
            tags = requests.get(f"{self.url}/instances/{orthanc_id}/simplified-tags", auth=self.auth,
                                timeout=30).json()
            found.append((tags["StudyInstanceUID"], tags["SeriesInstanceUID"], tags["SOPInstanceUID"]))
        return sorted(found)

    def delete_study(self, study_uid: str) -> None:
        ids = requests.post(f"{self.url}/tools/lookup", data=study_uid, auth=self.auth, timeout=30).json()
        for item in ids:
            if item["Type"] == "Study":
                requests.delete(f"{self.url}/studies/{item['ID']}", auth=self.auth, timeout=30).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # its storage is thrown away: no need to wait for a clean shutdown
            self.process.wait(10)
        self._log.close()


@dataclass
class Faults:
    """What the proxy does to requests. `hook` may act before a request is forwarded (path given)."""

    bearer: str | None = None  # require this bearer token (and forward with Orthanc's basic auth)
    fail_status: dict[str, int] = field(default_factory=dict)  # path part -> answer this status...
    fail_times: dict[str, int] = field(default_factory=dict)  # ...this many times (then forward)
    delay: dict[str, float] = field(default_factory=dict)  # path part -> sleep this long first
    hook: Callable[[str], None] | None = None


class Proxy:
    """A threaded HTTP proxy to Orthanc that records every GET path and injects `faults`."""

    def __init__(self, orthanc: Orthanc, faults: Faults | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.orthanc = orthanc
        self.faults = faults or Faults()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:  # (certificate, key): HTTPS, as a hospital gateway would serve
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.dicomweb = f"{self.url}/dicom-web"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def fetched(self) -> list[str]:
        """Paths of the WADO-RS instance retrievals seen, in order."""
        with self._lock:
            return [p.split("/dicom-web/", 1)[1] for p in self.requests if "/instances/" in p]

    def listed(self) -> list[str]:
        with self._lock:
            return [p for p in self.requests if p.split("?")[0].endswith(("/studies", "/instances"))]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        faults, path = self.faults, handler.path
        with self._lock:
            self.requests.append(path)
        if faults.bearer is not None and handler.headers.get("Authorization") != f"Bearer {faults.bearer}":
            self._answer(handler, 401, b"bearer token required")
            return
        for part, seconds in faults.delay.items():
            if part in path:
                time.sleep(seconds)
        for part, status in faults.fail_status.items():
            if part in path:
                with self._lock:
                    left = faults.fail_times.get(part, 1)
                    if left > 0:
                        faults.fail_times[part] = left - 1
                if left > 0:
                    self._answer(handler, status, b"injected failure")
                    return
        if faults.hook is not None:
            faults.hook(path)
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("accept",)}
        try:
            answer = requests.get(self.orthanc.url + path, headers=headers, auth=self.orthanc.auth, timeout=60)
        except requests.RequestException:
            self._answer(handler, 502, b"orthanc unreachable")
            return
        keep = {"content-type"}
        self._answer(handler, answer.status_code, answer.content,
                     {k: v for k, v in answer.headers.items() if k.lower() in keep})

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None,
                ) -> None:
        try:
            handler.send_response(status)
            for key, value in (headers or {"Content-Type": "text/plain"}).items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def orthanc(tmp_path: Path):
    reason = orthanc_missing()
    if reason and os.environ.get("MEDSEARCH_REQUIRE_ORTHANC") == "1":
        pytest.fail(f"MEDSEARCH_REQUIRE_ORTHANC=1 but {reason}")
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture
def proxy(orthanc: Orthanc):
    front = Proxy(orthanc)
    yield front
    front.stop()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by nobody a client trusts (openssl, part of Debian)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return cert, key
