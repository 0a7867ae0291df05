"""Load test (bounded, loopback only): concurrent clients mixing text, image, filtered and similar
queries against a real `medsearch-api serve`, then the same while an indexing run commits new images.

    .venv/bin/python bench/load_test.py [--clients 50] [--seconds 60] [--model data/random-siglip]

Reports requests, errors, p50/p99 per query kind and overall, for both phases; an error is any
non-200 answer, transport failure, or a torn read (a result without its row or sources).
Results also go to bench/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ["right pleural effusion", "chest x-ray", "brain mri", "knee fracture", "liver ct", "normal",
           "lung nodule", "shoulder", "ultrasound of the heart", "pneumonia left lung"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_new_images(folder: Path, count: int) -> Path:
    """Distinct DICOM files for the concurrent indexing run."""
    from indexer.sample import pydicom_test_files

    folder.mkdir(parents=True)
    template = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    rng = np.random.default_rng(9)
    for i in range(count):
        ds = template.copy()
        ds.PixelData = (template.pixel_array + rng.integers(0, 40, template.pixel_array.shape)).astype(
            template.pixel_array.dtype).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.9{i}"
        ds.save_as(folder / f"new{i:04d}.dcm")
    return folder


async def client(http: httpx.AsyncClient, deadline: float, uploads: list[bytes], ids: list[int],
                 latencies: dict[str, list[float]], errors: dict[str, int]) -> None:
    rng = random.Random()
    while time.monotonic() < deadline:
        kind = rng.choice(["text", "text", "filtered", "image", "similar"])
        started = time.perf_counter()
        try:
            if kind == "text":
                response = await http.post("/search/text", json={"query": rng.choice(QUERIES), "k": 10})
            elif kind == "filtered":
                response = await http.post("/search/text", json={"query": rng.choice(QUERIES), "k": 10, "filters": {
                    "modality": rng.choice([["CT"], ["MR"], ["CT", "MR", "US"]])}})
            elif kind == "image":
                response = await http.post("/search/image", files={"file": ("q.dcm", rng.choice(uploads))},
                                           data={"k": "10"})
            else:
                response = await http.post("/search/similar", json={"image_id": rng.choice(ids), "k": 10})
            ok = response.status_code == 200 and all(r["sources"] and r["metadata"] is not None
                                                      for r in response.json()["results"])
        except (httpx.HTTPError, ValueError, KeyError):
            ok = False
        latencies[kind].append(time.perf_counter() - started)
        if not ok:
            errors[kind] += 1


async def phase(base: str, clients: int, seconds: float, uploads: list[bytes], ids: list[int]) -> dict[str, object]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client(http, deadline, uploads, ids, latencies, errors) for _ in range(clients)))
    every = [x for values in latencies.values() for x in values]

    def summary(values: list[float], failed: int) -> dict[str, float | int]:
        return {"requests": len(values), "errors": failed, "p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
                "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1)}

    result: dict[str, object] = {kind: summary(values, errors[kind]) for kind, values in sorted(latencies.items())}
    result["all"] = {**summary(every, sum(errors.values())), "requests_per_s": round(len(every) / seconds, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--model", default=str(ROOT / "data" / "random-siglip"))
    parser.add_argument("--new-images", type=int, default=300)
    args = parser.parse_args()
    py = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="medsearch-load-"))
    server = None
    try:
        if not Path(args.model).exists():
            subprocess.run([py / "medsearch-index", "random-model", args.model], check=True)
        sample = ROOT / "data" / "sample-archive.zip"
        if not sample.exists():
            subprocess.run([py / "medsearch-index", "sample-archive", str(sample)], check=True)
        db = work / "db"
        subprocess.run([py / "medsearch-index", "run", str(sample), "--db", str(db), "--model", args.model,
                        "--no-progress", "--log-level", "ERROR"], check=True, capture_output=True)
        new_images = make_new_images(work / "new", args.new_images)
        port = free_port()
        server = subprocess.Popen([py / "medsearch-api", "serve", "--db", str(db), "--port", str(port), "--open",
                                   "--log-level", "ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        from indexer.sample import pydicom_test_files

        uploads = [(pydicom_test_files() / name).read_bytes() for name in ("CT_small.dcm", "MR_small.dcm")]
        ids = [r["image_id"] for r in httpx.post(f"{base}/search/text", json={"query": "x", "k": 40}).json()["results"]]
        before = httpx.get(f"{base}/health").json()["vectors"]
        quiet = asyncio.run(phase(base, args.clients, args.seconds, uploads, ids))
        indexer = subprocess.Popen([py / "medsearch-index", "run", str(new_images), "--db", str(db), "--model",
                                    args.model, "--batch-size", "4", "--checkpoint-seconds", "2", "--no-progress",
                                    "--log-level", "ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        busy = asyncio.run(phase(base, args.clients, args.seconds, uploads, ids))
        indexer_rc = indexer.wait(timeout=600)
        time.sleep(2)
        after = httpx.get(f"{base}/health").json()["vectors"]
        result = {"clients": args.clients, "seconds": args.seconds, "model": args.model, "cores": os.cpu_count(),
                  "quiet": quiet, "while_indexing": busy, "indexing_exit_code": indexer_rc,
                  "vectors_before": before, "vectors_after": after}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
