"""API latency, split into its parts, for text and image queries, with a tiny and a mid-size model.

    .venv/bin/python -m bench.api_bench [--repeat 50]

Parts (median ms over --repeat queries): decode (image queries: the upload read as the indexer
would), encode (text or image tower), vector search, metadata fetch (SQLite), serialisation
(response models to JSON), key check, audit write, and the whole request through FastAPI; plus a
text query answered from the embedding cache. Then a real server over loopback HTTP with a key and
the audit written: a cached text query (all of it is overhead beyond encoding), an authenticated
request that does nothing (`/whoami`: HTTP, the gate, the key check) and the rest of the request
(the route's own work and FastAPI's), with OMP_WAIT_POLICY ACTIVE and PASSIVE. Results:
bench/results/api.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from bench.common import write_result
from core.settings import Settings
from indexer.sample import pydicom_test_files
from search_api.app import build_access, build_service, create_app
from search_api.routes.views import image_parts, model_info
from search_api.schemas.search import SearchResponse, SearchResult
from search_api.security.auth import AccessControl, Principal

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["right pleural effusion", "chest x-ray", "brain mri", "knee fracture", "liver ct"]


def median_ms(fn, repeat: int) -> float:
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 3)


def bench_model(model: Path, repeat: int, work: Path) -> dict[str, object]:
    py = Path(sys.executable).parent
    db = work / model.name
    subprocess.run([py / "medsearch-index", "run", str(ROOT / "data" / "sample-archive.zip"), "--db", str(db),
                    "--model", str(model), "--no-progress", "--log-level", "ERROR"], check=True, capture_output=True)
    settings = Settings(db_dir=db, model=str(model), device="cpu")
    service = build_service(settings)
    upload = (pydicom_test_files() / "CT_small.dcm").read_bytes()
    store, encoder = service.store, service.encoder
    text_vector = encoder.encode_texts(["x"])
    image = service.load_query_image(upload, "q")
    pairs = store.search(text_vector, 10)[0]
    rows = service.repository.get_images([i for i, _ in pairs])

    info = model_info(service)
    access, clinician = AccessControl(None, open_mode=True), Principal("bench", "clinician")

    def serialise(_: int) -> None:
        results = [SearchResult(rank=n + 1, score=s, **image_parts(rows[i], service, access, clinician))
                   for n, (i, s) in enumerate(pairs)]
        SearchResponse(query_kind="text", k=10, results=results, model=info, warning=info.warning).model_dump_json()

    key = create_key(db, "bench-parts")
    keyed = build_access(settings, open_mode=False)
    parts = {
        "key_check": median_ms(lambda i: keyed.authenticate(key), repeat),
        "audit_write": median_ms(lambda i: keyed.record(clinician, "search", "text", [i for i, _ in pairs]), repeat),
        "decode_image": median_ms(lambda i: service.load_query_image(upload, "q"), repeat),
        "encode_text": median_ms(lambda i: encoder.encode_texts([f"{TEXTS[i % 5]} {i}"]), repeat),
        "encode_image": median_ms(lambda i: encoder.encode_images([image.pixels]), repeat),
        "vector_search": median_ms(lambda i: store.search(text_vector, 10), repeat),
        "metadata_fetch": median_ms(lambda i: service.repository.get_images([i for i, _ in pairs]), repeat),
        "serialisation": median_ms(serialise, repeat),
        "text_cache_hit": median_ms(lambda i: service.text_vector("chest x-ray"), repeat),
    }
    service.text_vector("chest x-ray")
    app = create_app(settings, service=service, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as client:
        parts["request_text"] = median_ms(lambda i: client.post(
            "/search/text", json={"query": f"{TEXTS[i % 5]} {i}", "k": 10}), repeat)
        parts["request_text_cached"] = median_ms(lambda i: client.post(
            "/search/text", json={"query": "chest x-ray", "k": 10}), repeat)
        parts["request_image"] = median_ms(lambda i: client.post(
            "/search/image", files={"file": ("q.dcm", upload)}, data={"k": "10"}), repeat)
    service.close()
    http = {policy: over_http(db, model, repeat, policy) for policy in ("ACTIVE", "PASSIVE")}
    return {"model": model.name, "dim": encoder.dim, "vectors": store.ntotal, "median_ms": parts,
            "http_with_key_and_audit": http}


def create_key(db: Path, name: str) -> str:
    py = Path(sys.executable).parent
    created = subprocess.run([py / "medsearch-api", "keys", "create", "--db", str(db), "--role", "clinician",
                              "--name", name], check=True, capture_output=True, text=True)
    return created.stdout.strip().splitlines()[-1]


def over_http(db: Path, model: Path, repeat: int, wait_policy: str) -> dict[str, float]:
    """A real server (`medsearch-api serve`, a clinician key, the audit written) over loopback HTTP with
    keep-alive: p50/p90 ms of a text query whose embedding is cached (all of it is overhead beyond
    encoding) and of a fresh text query, with OMP_WAIT_POLICY as given."""
    import os
    import socket

    import httpx

    py = Path(sys.executable).parent
    key = create_key(db, f"bench-{wait_policy}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_WAIT_POLICY": wait_policy}
    server = subprocess.Popen([py / "medsearch-api", "serve", "--db", str(db), "--model", str(model), "--port",
                               str(port), "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for _ in range(600):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            client.post("/search/text", json={"query": "chest x-ray", "k": 10}).raise_for_status()

            def timed(query: str | None) -> float:
                started = time.perf_counter()
                if query is None:
                    client.get("/whoami").raise_for_status()
                else:
                    client.post("/search/text", json={"query": query, "k": 10}).raise_for_status()
                return (time.perf_counter() - started) * 1000

            cached, idle = [], []
            for _ in range(repeat):  # interleaved, so that both see the same machine
                cached.append(timed("chest x-ray"))
                idle.append(timed(None))
            fresh = [timed(f"{TEXTS[i % 5]} {i}") for i in range(repeat)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"cached_text_p50_ms": round(float(np.percentile(cached, 50)), 2),
            "cached_text_p90_ms": round(float(np.percentile(cached, 90)), 2),
            "whoami_p50_ms": round(float(np.percentile(idle, 50)), 2),
            "fresh_text_p50_ms": round(float(np.percentile(fresh, 50)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--models", default="data/random-siglip,data/random-base")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medsearch-apibench-"))
    try:
        results = [bench_model(ROOT / m, args.repeat, work) for m in args.models.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for result in results:
        print(result)
    print(f"written {write_result('api', {'repeat': args.repeat, 'models': results})}")


if __name__ == "__main__":
    main()
