"""The Ray engine against the local engine and the bare model, on the same archive and model, in one run.

    .venv/bin/python -m bench.ray_throughput --model data/random-base --images 96

Figures, all measured in this run on this machine:
- bare model images/s (start_encoding on the assembled batches), local and Ray engine images/s
  (the run, `medsearch-index run` as a user runs it), their ratios, the commands' wall times, and when
  the Ray run committed its first unit (scheduling, actor start and model load: a fixed cost per run);
- the per-unit overhead: the same run with small and large units;
- the driver's commit rate in images/s (a unit of 32 images with 1152-d vectors, one transaction each)
  on SQLite and, with --postgres URL, on PostgreSQL;
- an estimate (labelled as one) of what 10M images take on N GPUs from those figures.
Results also go to bench/results/ray_<model>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from bench.indexing_throughput import make_archive
from core.imaging.images import load_image_file
from core.model.encoder import HFEncoder
from core.model.inputs import assemble
from storage.opening import open_index
from tests.storage.test_store import fingerprint, records

GPU_IMAGES_PER_S = (400, 800)  # MedSigLIP-448 on one H100 in bf16 (the figures, not measured here)


def run_cli(archive: Path, db: Path, model: Path, *options: str) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, images/s of the run, stage seconds) of `medsearch-index run`."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "indexer.cli.main", "run", str(archive), "--db", str(db), "--model",
                           str(model), "--no-progress", "--log-level", "ERROR", *options], capture_output=True,
                          text=True, check=True, env=env)
    wall = time.perf_counter() - started
    rate = float(re.search(r"\(([\d.]+) images/s\)", done.stdout).group(1))  # type: ignore[union-attr]
    stages = {name: float(secs) for name, secs in re.findall(r"([a-z ]+) ([\d.]+) s", done.stdout.split(
        "stage times:")[1].splitlines()[0])} if "stage times:" in done.stdout else {}
    return wall, rate, {name.strip(): secs for name, secs in stages.items()}


def commit_rate(url: str | None, folder: Path, units: int = 20, per_unit: int = 32) -> float:
    """Images/s the driver commits: units of `per_unit` new images with 1152-d vectors, one transaction each."""
    from storage.records import UnitRecord

    with open_index(folder, create=True, database_url=url) as (store, repository):
        store.bind_model(fingerprint(dim=1152))
        run_id = repository.start_run("/bench", "k1")
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for unit in range(units):
            vectors = rng.normal(size=(per_unit, 1152)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.write(records(per_unit, prefix=f"u{unit}-", vectors=vectors), run_id=run_id,
                        unit=UnitRecord(f"{unit:064d}", per_unit, per_unit))
        return units * per_unit / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--postgres", help="a PostgreSQL URL to measure the commit rate on too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medsearch-ray-bench-"))
    archive = make_archive(work / "archive", args.images)

    encoder = HFEncoder.load(str(args.model), device="cpu")
    pixels = [load_image_file(path).pixels for path in sorted(archive.iterdir())]
    batches = [assemble(encoder.preprocess(pixels[i:i + 16]), encoder.input_buffer(16))
               for i in range(0, len(pixels), 16)]
    started = time.perf_counter()
    for batch in batches:
        encoder.start_encoding(batch).result()
    bare = len(pixels) / (time.perf_counter() - started)
    del encoder

    local_wall, local_rate, _ = run_cli(archive, work / "local", args.model)
    ray_wall, ray_rate, ray_stages = run_cli(archive, work / "ray", args.model, "--engine", "ray")
    small_wall, _, _ = run_cli(archive, work / "ray-small", args.model, "--engine", "ray", "--ray-unit-files", "4")
    first = ray_stages.get("first unit", 0.0)
    units_small, units_large = -(-args.images // 4), -(-args.images // 32)
    per_unit = (small_wall - ray_wall) / max(1, units_small - units_large)
    sqlite_rate = commit_rate(None, work / "commit-sqlite")
    pg_rate = commit_rate(args.postgres, work / "commit-pg") if args.postgres else None
    result = {
        "model": args.model.name, "images": args.images, "bare_model_images_per_s": round(bare, 2),
        "local_images_per_s": local_rate, "ray_images_per_s": ray_rate,
        "ray_over_local": round(ray_rate / local_rate, 3), "ray_over_bare_model": round(ray_rate / bare, 3),
        "ray_first_unit_committed_after_s": round(first, 2),
        "wall_s": {"local": round(local_wall, 1), "ray": round(ray_wall, 1)},
        "per_unit_overhead_s": round(per_unit, 3),
        "commit_images_per_s": {"sqlite": round(sqlite_rate, 1), "postgresql": pg_rate and round(pg_rate, 1)},
    }
    rate = sqlite_rate if pg_rate is None else pg_rate
    low, high = GPU_IMAGES_PER_S

    def hours(gpus: int, per_gpu: float) -> float:
        return 10_000_000 / min(gpus * per_gpu, rate) / 3600

    result["estimate_10M"] = {f"{gpus} GPUs": f"{hours(gpus, high):.1f}-{hours(gpus, low):.1f} h"
                              for gpus in (1, 8, 32)}
    result["estimate_note"] = ("ESTIMATE: 10M images / min(GPUs x 400-800 images/s (MedSigLIP-448, bf16, H100: not "
                               "measured here), the driver's commit rate measured above); decoding needs about "
                               "one CPU core per 30-60 images/s (bench/indexing_throughput.py)")
    path = write_result(f"ray_{args.model.name}", result)
    for key, value in result.items():
        print(f"{key}: {value}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
