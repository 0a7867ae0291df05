"""Every path's cost as the archive grows: N synthetic images (bench/scale_data.py: patients, studies,
series, modalities, body parts, dates, labels, reports) written through the store's own write path, then
at each N:

- `build-index` (automatic kind, tuned for image and text queries) time and peak memory; `verify` time;
- an unchanged-archive rerun's listing (indexer.pipeline.scan.list_source over the archive's real files) in files/s;
- a real `medsearch-api serve`: start-up time (until /health answers), RSS after the queries, the
  index's own bytes; text search p50/p99 over loopback HTTP: image mode plain, with filters (modality +
  date range + a label: a broad one of ~1.4% and a selective one of ~0.04%), with group_by=study, with
  facets (totals are in every answer), hybrid (reports fused), report mode, and a probe filter (a stored
  linear probe over every image);
- removal of one patient (Store.remove, as `medsearch-index remove` runs it): until readers leave it out
  (its tombstones logged), and the compaction after it that rewrites the files.

It prints a table, the growth exponent of each figure (the slope of log figure against log N between the
two largest sizes, and fitted over all), writes bench/results/scale.json and draws scale.png (log-log).
Vectors are --dim dimensional (256 by default: the model is a random 256-d SigLIP, `random-model --shape
wide`), so that the 10M point fits one machine's memory; say so beside any figure quoted.

    python -m bench.scale --sizes 10000,30000,100000 [--sizes ...,1000000,10000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import numpy as np

from bench.common import RESULTS, write_result
from bench.scale_data import LABELS, fill
from core.reports import report_analyzer
from core.sources import open_source
from indexer.pipeline.model import ModelSpec, resolve_model
from indexer.pipeline.scan import list_source
from storage.opening import open_index
from storage.records import Selection
from storage.sql.probes import Probe

BIN = Path(sys.executable).parent
QUERIES = ["pleural effusion", "right lower lobe pneumonia", "no pneumothorax", "cardiomegaly", "fracture",
           "lung nodule", "consolidation left", "normal chest", "possible effusion", "knee fracture"]
FILTERS = {"modality": ["CR", "DX"], "study_date_from": "2010-01-01", "study_date_to": "2020-12-31",
           "labels": ["effusion"]}  # ~1.4% of the images: a broad filter, checked on the nearest images
SELECTIVE = {"modality": ["MR"], "study_date_from": "2019-01-01", "study_date_to": "2019-12-31",
             "labels": ["fracture"]}  # ~0.04%: listed from the filter indexes (migration 0008)
PROBE = "scale-probe"
PATHS: dict[str, tuple[str, dict[str, Any]]] = {
    "text": ("/search/text", {"mode": "image"}),
    "filtered": ("/search/text", {"mode": "image", "filters": FILTERS}),
    "selective": ("/search/text", {"mode": "image", "filters": SELECTIVE}),
    "grouped": ("/search/text", {"mode": "image", "group_by": "study"}),
    "facets": ("/search/text", {"mode": "image", "facets": True}),
    "hybrid": ("/search/text", {"mode": "hybrid"}),
    "report": ("/search/text", {"mode": "report"}),
    "probe": ("/search/text", {"mode": "image", "filters": {"probe": {"name": PROBE, "label": "effusion"}}}),
}


def child(command: list[str]) -> tuple[float, int]:
    """Run a command; (seconds, peak RSS bytes). Raises on failure, with its output."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss * 1024


def add_probe(db: Path, fingerprint_key: str, dim: int, seed: int) -> None:
    """A linear probe over the labels (random directions, an intercept that makes ~1/4 of images positive):
    what a probe filter costs does not depend on what it learnt."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((len(LABELS), dim)).astype(np.float32) * 4
    with open_index(db) as (_, repository):
        repository.save_probe(Probe(PROBE, fingerprint_key, "synthetic", dt.datetime.now(dt.UTC), list(LABELS),
                                    weights, np.full(len(LABELS), -0.7, dtype=np.float32)), replace=True)


def listing_rate(db: Path, archive: Path) -> dict[str, float]:
    with open_index(db, read_only=True) as (_, repository):
        started = time.perf_counter()
        listing = list_source(open_source(archive), repository)
        pending = listing.pending
        seconds = time.perf_counter() - started
    if pending:
        raise RuntimeError(f"an unchanged archive listed {pending} files as pending")
    return {"listing_files_per_s": len(listing.entries) / seconds, "listing_s": seconds}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def api_figures(db: Path, repeat: int) -> dict[str, float]:
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([str(BIN / "medsearch-api"), "serve", "--db", str(db), "--port", str(port), "--open",
                               "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out: dict[str, float] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while True:
                if server.poll() is not None:
                    output = server.stderr.read().decode()[-3000:] if server.stderr else ""
                    raise RuntimeError(f"the API exited: {output}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            out["startup_s"] = time.perf_counter() - started
            for name, (route, options) in PATHS.items():
                times = []
                for i in range(repeat + len(QUERIES)):  # the first round encodes each query once: not timed
                    begun = time.perf_counter()
                    answer = client.post(route, json={"query": QUERIES[i % len(QUERIES)], "k": 10, **options})
                    elapsed = (time.perf_counter() - begun) * 1000
                    if answer.status_code != 200:
                        raise RuntimeError(f"{name}: HTTP {answer.status_code} {answer.text[:500]}")
                    if i >= len(QUERIES):
                        times.append(elapsed)
                out[f"{name}_p50_ms"] = float(np.percentile(times, 50))
                out[f"{name}_p99_ms"] = float(np.percentile(times, 99))
                print(f"    {name}: p50 {out[f'{name}_p50_ms']:.1f} ms, p99 {out[f'{name}_p99_ms']:.1f} ms", flush=True)
            out["api_rss_bytes"] = rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return out


def removal(db: Path) -> dict[str, float]:
    """Store.remove of one patient (what `medsearch-index remove` runs), effective for readers once its
    tombstones are logged, then the compaction that rewrites the files."""
    with open_index(db) as (store, _):
        started = time.perf_counter()
        preview = store.remove(Selection(patient_id="P00000002"), "scale bench", compact=False)
        removed = time.perf_counter()
        store.compact()
        return {"remove_patient_s": removed - started, "compact_s": time.perf_counter() - removed,
                "removed_images": preview.images}


def measure(n: int, work: Path, model: str, repeat: int, seed: int) -> dict[str, float]:
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    fingerprint = ModelSpec(model).fingerprint().to_dict()
    print(f"{n:,} images: writing", flush=True)
    out: dict[str, float] = {"n": n, **fill(folder, n, fingerprint, report_analyzer(), fingerprint["dim"], seed)}
    db, index = folder / "db", ["medsearch-index"]
    out["build_index_s"], out["build_index_peak_bytes"] = child([str(BIN / index[0]), "build-index", "--db", str(db)])
    out["index_bytes"] = sum(p.stat().st_size for p in db.rglob("index.*") if p.is_file())
    out["database_bytes"] = sum(p.stat().st_size for p in db.rglob("medsearch.sqlite*") if p.is_file())
    print(f"  build-index {out['build_index_s']:.1f} s, peak {out['build_index_peak_bytes'] / 2**20:,.0f} MiB; "
          f"index {out['index_bytes'] / 2**20:,.0f} MiB; database {out['database_bytes'] / n:,.0f} B an image",
          flush=True)
    out["verify_s"], _ = child([str(BIN / index[0]), "verify", "--db", str(db)])
    out |= listing_rate(db, folder / "archive")
    print(f"  verify {out['verify_s']:.1f} s; rerun listing {out['listing_files_per_s']:,.0f} files/s", flush=True)
    add_probe(db, fingerprint["key"], int(fingerprint["dim"]), seed)
    out |= api_figures(db, repeat)
    print(f"  API start-up {out['startup_s']:.1f} s, RSS {out['api_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
    out |= removal(db)
    print(f"  removal of one patient ({out['removed_images']:.0f} images) {out['remove_patient_s']:.2f} s, then "
          f"compaction {out['compact_s']:.2f} s", flush=True)
    return out


def exponents(rows: list[dict[str, float]], name: str) -> tuple[float | None, float | None]:
    """(slope between the two largest sizes, least-squares slope over all) of log figure against log N."""
    points = [(r["n"], r[name]) for r in rows if r.get(name, 0) > 0]
    if len(points) < 2:
        return None, None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float((y[-1] - y[-2]) / (x[-1] - x[-2])), float(np.polyfit(x, y, 1)[0])


FIGURES = [*(f"{p}_{q}_ms" for p in PATHS for q in ("p50", "p99")), "startup_s", "api_rss_bytes", "index_bytes",
           "database_bytes", "remove_patient_s", "compact_s", "verify_s", "listing_files_per_s", "build_index_s",
           "build_index_peak_bytes", "write_images_per_s"]


def table(rows: list[dict[str, float]]) -> tuple[str, dict[str, dict[str, float | None]]]:
    growth = {name: dict(zip(("last", "all"), exponents(rows, name), strict=True)) for name in FIGURES}
    head = f"{'figure':<26}" + "".join(f"{int(r['n']):>12,}" for r in rows) + f"{'exp(last)':>11}{'exp(all)':>10}"
    lines = [head]
    for name in FIGURES:
        cells = "".join(f"{r.get(name, float('nan')):>12,.4g}" for r in rows)
        last, fitted = growth[name]["last"], growth[name]["all"]
        lines.append(f"{name:<26}{cells}{'' if last is None else f'{last:>11.2f}'}"
                     f"{'' if fitted is None else f'{fitted:>10.2f}'}")
    return "\n".join(lines), growth


def plot(rows: list[dict[str, float]], dim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    panels = [("request p50 (ms)", [f"{p}_p50_ms" for p in PATHS]),
              ("request p99 (ms)", [f"{p}_p99_ms" for p in PATHS]),
              ("operations (s)", ["startup_s", "remove_patient_s", "compact_s", "verify_s", "build_index_s",
                                  "listing_s"]),
              ("memory and disk (bytes)", ["api_rss_bytes", "index_bytes", "database_bytes", "build_index_peak_bytes"])]
    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    for axis, (title, names) in zip(axes.flat, panels, strict=True):
        for name in names:
            values = [r.get(name, float("nan")) for r in rows]
            last, _ = exponents(rows, name)
            axis.loglog(n, values, marker="o", label=f"{name} (exp {last:.2f})" if last is not None else name)
        axis.set_title(title)
        axis.set_xlabel(f"images (N, {dim}-d)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("medsearch: cost against archive size (2 cores, one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,30000,100000", help="archive sizes, comma-separated")
    parser.add_argument("--model", default="data/random-wide", help="a random 256-d SigLIP (random-model --shape "
                        "wide): its dimension is the vectors'")
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per path")
    parser.add_argument("--work", type=Path, help="keep the archives and indexes here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = resolve_model(args.model)
    dim = int(ModelSpec(model).fingerprint().dim)
    rows = []
    with TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(n, work, model, args.repeat, args.seed))
            if args.work is None:
                shutil.rmtree(work / f"n{n}", ignore_errors=True)
    text, growth = table(rows)
    print(f"\n{dim}-d vectors, {os.cpu_count()} cores; growth exponent = slope of log figure / log N\n{text}")
    RESULTS.mkdir(exist_ok=True)
    plot(rows, dim, RESULTS / "scale.png")
    print(f"results: {write_result('scale', {'dim': dim, 'rows': rows, 'growth': growth})}, {RESULTS / 'scale.png'}")


if __name__ == "__main__":
    main()
