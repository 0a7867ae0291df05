"""A user's whole path: `medsearch-index run` on a zip, then `medsearch-api serve`, queried over real HTTP."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import dicom_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_index_then_serve_then_query(archive_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    zipped = shutil.make_archive(str(tmp_path / "archive"), "zip", archive_dir)
    db = tmp_path / "db"
    indexed = subprocess.run(
        [sys.executable, "-m", "indexer.cli.main", "run", zipped, "--db", str(db), "--model", str(tiny_model_dir),
         "--no-progress"], capture_output=True, text=True, timeout=300, check=False)
    assert indexed.returncode == 0, indexed.stderr

    port = free_port()
    # no --model: the API loads the model the index was built with
    server = subprocess.Popen([sys.executable, "-m", "search_api.cli", "serve", "--db", str(db), "--port",
                               str(port), "--log-level", "WARNING", "--open"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.3)
        text = httpx.post(f"{base}/search/text", json={"query": "chest ct", "k": 5}, timeout=30).json()
        assert len(text["results"]) == 5 and "RANDOM" in text["warning"]
        upload = dicom_file("CT_small.dcm").read_bytes()
        image = httpx.post(f"{base}/search/image", files={"file": ("ct", upload)}, timeout=30).json()
        assert image["results"][0]["source"]["path"] == "dicom/CT_small.dcm"
        assert image["results"][0]["metadata"]["modality"] == "CT"
    finally:
        server.terminate()
        server.wait(timeout=30)
