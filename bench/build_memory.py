"""The index build's peak memory beside the built index's own: `Store.build_index` over N stored
vectors, each in a fresh process, its peak memory during the build over its memory before it (the
store open), and the index's own bytes (its serialised size), at several N; then the line
peak = slope x index + constant fitted through them. Memory is the process's anonymous resident memory
(RssAnon, sampled every 5 ms: the peak of what it allocated), not the database file's pages that
SQLite's memory map brings in. The build holds the index, a training sample (at most 100,000 vectors),
the tuning queries and one chunk of the exact scan, so the slope should be ~1 and the rest constant.
Results: bench/results/build_memory.json.

    python -m bench.build_memory [--sizes 100000,200000,400000] [--dim 256] [--kind ivf]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from bench.search_data import Mixture


def resident(field: str) -> int:
    """Bytes of /proc/self/status's `field` (RssAnon: the process's own memory now, without the pages
    of files it maps, such as the database's, which the kernel can drop)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def fill(folder: Path, n: int, dim: int) -> None:
    from storage.opening import open_index

    with open_index(folder, create=True) as (store, _):
        store.bind_model({"key": "bench", "name": "bench", "revision": None, "weights_sha256": None, "dim": dim,
                          "preprocessing_version": "1", "random_weights": True})
    mixture = Mixture.make(dim, seed=7)
    with sqlite3.connect(folder / "medsearch.sqlite") as con:  # the embeddings table only: what a build reads
        for start in range(0, n, 50_000):
            vectors = mixture.draw(min(50_000, n - start), seed=start)
            con.executemany("INSERT INTO embeddings (image_id, fingerprint_key, vector) VALUES (?, 'bench', ?)",
                            ((start + i + 1, v.tobytes()) for i, v in enumerate(vectors)))


def child(folder: Path, kind: str) -> dict[str, Any]:
    """One build in this process: what it measured."""
    from storage.opening import open_index

    with open_index(folder) as (store, _):
        before = resident("RssAnon")
        peak = [before]
        done = threading.Event()

        def watch() -> None:  # the process's own memory, not the database file's pages it maps
            while not done.wait(0.005):
                peak[0] = max(peak[0], resident("RssAnon"))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            report = store.build_index(kind)
        finally:
            done.set()
            watcher.join()
        assert store._index is not None
        index_bytes = len(store._index.raw_bytes())
    return {"vectors": report.vectors, "kind": report.kind, "index_bytes": index_bytes, "anon_before": before,
            "peak": peak[0], "peak_over_open_store": peak[0] - before, "seconds": report.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,200000,400000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kind", default="ivf")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.kind)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="medsearch-buildmem-") as work:
        for n in (int(s) for s in args.sizes.split(",")):
            folder = Path(work) / f"db-{n}"
            fill(folder, n, args.dim)
            out = subprocess.run([sys.executable, "-m", "bench.build_memory", "--child", str(folder), "--kind",
                                  args.kind], check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>9,} x {args.dim}: {row['kind']} index {row['index_bytes'] / 2**20:7.1f} MiB, build peak over "
                  f"the open store {row['peak_over_open_store'] / 2**20:7.1f} MiB "
                  f"({row['peak_over_open_store'] / row['index_bytes']:.2f}x), {row['seconds']:.0f} s", flush=True)
    x = np.array([r["index_bytes"] for r in rows], dtype=float)
    y = np.array([r["peak_over_open_store"] for r in rows], dtype=float)
    slope, constant = np.polyfit(x, y, 1) if len(rows) > 1 else (y[0] / x[0], 0.0)
    print(f"fitted: peak = {slope:.2f} x index + {constant / 2**20:.0f} MiB")
    result = {"dim": args.dim, "rows": rows, "slope": slope, "constant": constant}
    print(f"written {write_result('build_memory', result)}")


if __name__ == "__main__":
    main()
