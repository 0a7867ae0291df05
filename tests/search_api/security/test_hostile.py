"""An outsider costs nothing, a bomb costs no memory: a real `medsearch-api serve` process is sent
oversized bodies without a key, decompression bombs with one, and hosts it must not answer; its peak
memory (VmHWM) is read from /proc before and after, and the bounds are asserted, never the time."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl
from storage.access import AccessStore
from tests.conftest import dicom_file
from tests.hostile import api_server, deflated_dicom, peak_kb, png_bomb

MB = 1024 * 1024
DECODE_PEAK_BYTES_PER_PIXEL = 34  # measured: decode + window + RGB of a 16-bit CT slice
UPLOAD_PIXELS = 4096 * 4096


@pytest.fixture(scope="module")
def served(indexed_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    db = tmp_path_factory.mktemp("hostile") / "db"
    shutil.copytree(indexed_db, db, ignore=shutil.ignore_patterns(".writer.lock", "access.sqlite"))
    access = AccessStore.open(db)
    key = access.create_key("hostile test", "clinician")[1]
    access.close()
    with api_server(db, env={"MEDSEARCH_AUTH_FAILURE_LIMIT": "100000"}) as (url, process):
        warm = httpx.post(f"{url}/search/image", files={"file": ("ct", dicom_file("CT_small.dcm").read_bytes())},
                          headers={"X-API-Key": key}, timeout=60)
        assert warm.status_code == 200, warm.text
        yield url, process.pid, key


def raw_request(url: str, head: str, body_sent: bytes) -> str:
    """Send a request head and part of its body on a plain socket; return the status line of the answer
    (the server answers without waiting for the rest)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n" + body_sent)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer.split(b"\r\n", 1)[0].decode()


def test_an_outsider_costs_no_memory_or_disk(served):
    url, pid, key = served
    before = peak_kb(pid)
    json_head = (f"POST /search/text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {200 * MB}\r\n")
    assert raw_request(url, json_head, b'{"query": "' + b"x" * MB) == "HTTP/1.1 401 Unauthorized"
    upload_head = (f"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {300 * MB}\r\n"
                   "Content-Type: multipart/form-data; boundary=XYZ\r\n")
    part = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="big.dcm"\r\n\r\n' + b"\0" * MB
    assert raw_request(url, upload_head, part) == "HTTP/1.1 401 Unauthorized"
    # with a key: a declared size over the cap is refused unread, an undeclared one where it crosses the cap
    too_big = raw_request(url, json_head + f"Authorization: Bearer {key}\r\n", b"{")
    assert too_big == "HTTP/1.1 413 Request Entity Too Large"
    answer = httpx.post(f"{url}/search/text", headers={"X-API-Key": key, "Content-Type": "application/json"},
                        content=(b"x" * MB for _ in range(5)), timeout=60)  # chunked: no Content-Length
    assert answer.status_code == 413 and "limit of 1048576 bytes" in answer.json()["detail"][0]["msg"]
    assert (peak_kb(pid) - before) * 1024 < 50 * MB


def test_decompression_bombs_are_refused_with_bounded_memory(served, tmp_path: Path):
    url, pid, key = served
    bombs = {
        "deflated DICOM that inflates to 1 GiB": deflated_dicom(tmp_path / "lie.dcm", 512, 512, 1, 1024**3),
        "deflated DICOM declaring 16000x16000x4": deflated_dicom(tmp_path / "huge.dcm", 16000, 16000, 4, 2 * MB),
        "1-bit PNG of 9400x9400": png_bomb(tmp_path / "bomb.png", 9400),
    }
    before = peak_kb(pid)
    for what, path in bombs.items():
        assert path.stat().st_size < 2 * MB, what
        answer = httpx.post(f"{url}/search/image", files={"file": (path.name, path.read_bytes())},
                            headers={"X-API-Key": key}, timeout=120)
        assert answer.status_code == 413, (what, answer.text)
        assert answer.json()["detail"][0]["type"] == "too_large"
    assert (peak_kb(pid) - before) * 1024 < 100 * MB

    # the largest image an upload may be, three at once: at most two decode together (MEDSEARCH_DECODE_SLOTS)
    largest = deflated_dicom(tmp_path / "largest.dcm", 4096, 4096, 1, UPLOAD_PIXELS * 2)
    data = largest.read_bytes()
    ceiling = 2 * DECODE_PEAK_BYTES_PER_PIXEL * UPLOAD_PIXELS
    rss_before = resident_kb(pid)

    def upload(_: int) -> int:
        return httpx.post(f"{url}/search/image", files={"file": ("largest.dcm", data)}, headers={"X-API-Key": key},
                          timeout=300).status_code

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(upload, range(3))) == [200, 200, 200]
    grown = (peak_kb(pid) - before) * 1024
    assert grown < ceiling * 1.25, f"peak grew by {grown / MB:.0f} MB, ceiling {ceiling / MB:.0f} MB"
    assert (resident_kb(pid) - rss_before) * 1024 < 200 * MB  # memory goes back after the requests


def resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_open_mode_answers_loopback_host_names_only(indexed_db: Path, tmp_path: Path):
    db = tmp_path / "db"
    shutil.copytree(indexed_db, db, ignore=shutil.ignore_patterns(".writer.lock"))
    with api_server(db, "--open") as (url, _):
        for host, status in (("evil.example", 400), ("evil.example:8000", 400), ("127.0.0.1.nip.io", 400),
                             ("localhost:1234", 200), ("127.0.0.1", 200), ("[::1]:80", 200)):
            answer = httpx.get(f"{url}/health", headers={"Host": host}, timeout=10)
            assert answer.status_code == status, host
        refused = httpx.post(f"{url}/search/text", json={"query": "ct"}, headers={"Host": "rebound.example"})
        assert refused.status_code == 400 and refused.json()["detail"][0]["type"] == "bad_host"


def test_failed_logins_are_audited_and_limited(api_settings: Settings, encoder: HFEncoder, tmp_path: Path):
    store = AccessStore.open(tmp_path)
    admin = store.create_key("admin", "admin")[1]
    settings = api_settings.model_copy(update={"auth_failure_limit": 3})
    service = build_service(settings, encoder=encoder)
    app = create_app(settings, service=service, access=AccessControl(store, pseudonym_secret="s" * 32))
    with TestClient(app, base_url="http://localhost") as client:
        secret = "msk_deadbeef_" + "S3CRET" * 6
        for _ in range(3):
            assert client.post("/search/text", json={"query": "ct"}, headers={"X-API-Key": secret}).status_code == 401
        blocked = client.post("/search/text", json={"query": "ct"}, headers={"X-API-Key": admin})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    service.close()
    failures = [r for r in store.audit() if r["status"] == 401]
    assert [r["key_id"] for r in failures] == ["deadbeef"] * 3
    assert {r["client"] for r in failures} == {"testclient"} and {r["action"] for r in failures} == {"authenticate"}
    assert "S3CRET" not in Path(tmp_path / "access.sqlite").read_bytes().decode("latin-1")


def test_the_key_is_checked_before_the_body_is_read(client: TestClient, api_settings: Settings, encoder: HFEncoder,
                                                     tmp_path: Path):
    """At the ASGI level: without a valid key the application never asks for a byte of the body."""
    store = AccessStore.open(tmp_path)
    store.create_key("someone", "clinician")
    service = build_service(api_settings, encoder=encoder)
    app = create_app(api_settings, service=service, access=AccessControl(store, pseudonym_secret="s" * 32))
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read before the key was checked")

    async def send(message: dict) -> None:
        sent.append(message)

    for path in ("/search/image", "/search/text", "/classify"):
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": [(b"host", b"localhost"), (b"content-length", b"1000")], "client": ("10.0.0.9", 1),
                 "server": ("localhost", 80), "scheme": "http", "http_version": "1.1", "root_path": ""}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 401
    service.close()
