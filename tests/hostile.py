"""Hostile inputs made at test time without ever holding them in memory (decompression bombs), and a
real `medsearch-api serve` process whose peak memory the tests read from /proc."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests.conftest import dicom_file

CHUNK = b"\0" * (8 * 1024 * 1024)


def deflated_dicom(path: Path, rows: int, columns: int, frames: int, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian CT whose header declares rows x columns x frames and whose
    pixel data holds `pixel_bytes` zero bytes (a lie when they differ), compressed as it is written."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.PixelData = b"\0\0"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    plain = buffer.getvalue()
    body = plain[len(_meta_bytes(plain)):]
    marker = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW, then a 4-byte length and the value
    start = body.rindex(marker)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = pydicom.filebase.DicomBytesIO()
    header.write(plain[:132])
    pydicom.filewriter.write_file_meta_info(header, ds.file_meta, enforce_standard=False)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with path.open("wb") as out:
        out.write(header.getvalue())
        out.write(compressor.compress(body[:start] + marker + pixel_bytes.to_bytes(4, "little")))
        left = pixel_bytes
        while left > 0:
            piece = CHUNK[:min(left, len(CHUNK))]
            out.write(compressor.compress(piece))
            left -= len(piece)
        out.write(compressor.flush())
    return path


def _meta_bytes(plain: bytes) -> bytes:
    """The preamble, DICM and file meta group of a Part 10 file."""
    stream = io.BytesIO(plain)
    stream.seek(132)
    pydicom.filereader._read_file_meta_info(stream)
    return plain[:stream.tell()]


def png_bomb(path: Path, side: int) -> Path:
    """A 1-bit PNG of side x side pixels: a few kilobytes on disk."""
    Image.new("1", (side, side)).save(path, optimize=True)
    return path


def zip_bomb(path: Path, member_bytes: int) -> Path:
    """A zip with one member of `member_bytes` zeros (about 1000-fold compressed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive, \
            archive.open("bomb.dcm", "w", force_zip64=True) as member:
        left = member_bytes
        while left > 0:
            piece = CHUNK[:min(left, len(CHUNK))]
            member.write(piece)
            left -= len(piece)
    return path


def peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def api_server(db: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`medsearch-api serve --db DB ARGS` on a free loopback port, ready; yields its URL and process."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "search_api.cli", "serve", "--db", str(db), "--port",
                                str(port), "--log-level", "WARNING", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
