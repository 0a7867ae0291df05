"""`build-index --engine ray`: a large IVF index built from shards on a Ray cluster (storage/vectors/ondisk.py).

The driver trains the index once on a sample; each task fills a copy of it with one range of image ids,
read from the database itself (a SQLite file on a filesystem the nodes share, or the server of
MEDSEARCH_DATABASE_URL from the worker's own environment: no vector and no password through the
driver), and writes it as a shard; the driver merges the shards on disk, tunes nprobe against an exact
scan, and adopts the result, which readers pick up whole.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.engines.ray_engine import RayEngine
from indexer.errors import IndexerError
from storage.sql.repository import Repository
from storage.store import Store
from storage.vectors.build import BuildReport, build_report, tune_against_exact
from storage.vectors.ondisk import fill_shard, id_ranges, merge_shards, remove_unused_ivfdata, train_empty


def fill_range(database: str | None, trained: bytes, dim: int, low: int, high: int, out: str) -> int:
    """A Ray task: one id range into a copy of the trained index, written to `out`."""
    from core.settings import Settings

    url = database or Settings().database_url
    if url is None:
        raise IndexerError("this worker knows no database: set MEDSEARCH_DATABASE_URL in its environment")
    repository = Repository.open(url)
    try:
        return fill_shard(repository, trained, dim, low, high, Path(out))
    finally:
        repository.close()


def build_on_ray(store: Store, repository: Repository, engine: RayEngine, kind: str, memory_budget: int,
                 parts: int | None = None, text_queries: np.ndarray | None = None) -> BuildReport:
    """Train, fill shards in parallel tasks, merge on disk, tune (per query kind: storage.vectors.build),
    adopt. Raises IndexerError."""
    started = time.perf_counter()
    manifest = store.manifest
    if manifest is None:
        raise IndexerError("nothing indexed yet: run medsearch-index run first")
    engine.prepare()
    ray: Any = engine.ray
    dim = manifest.dim
    trained, plan = train_empty(repository, dim, "ivf" if kind in ("auto", "flat", "hnsw") else kind, memory_budget)
    ids = repository.embedding_ids()
    ranges = id_ranges(ids, parts or max(1, int(ray.cluster_resources().get("CPU", 1))))
    work = store.folder / "index-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    database = None if repository.engine.dialect.name != "sqlite" else repository.engine.url.render_as_string()
    task = ray.remote(num_cpus=1, max_retries=3)(fill_range)
    blob = trained.raw_bytes()
    pending = [task.remote(database, blob, dim, low, high, str(work / f"shard-{n}.index"))
               for n, (low, high) in enumerate(ranges)]
    try:
        added = sum(ray.get(pending, timeout=engine.options.stall_timeout_s))
    except ray.exceptions.GetTimeoutError:
        limit = engine.options.stall_timeout_s
        raise IndexerError(f"the Ray cluster did not finish the index shards within {limit:.0f} s: are its workers "
                           "busy or too few?") from None
    if added != len(ids):
        raise IndexerError(f"the shards hold {added} vectors, the database {len(ids)}: it changed during the build; "
                           "build again")
    merged, ivfdata = merge_shards(trained, sorted(work.glob("shard-*.index"), key=lambda p: int(p.stem[6:])),
                                   store.folder)
    image, text = tune_against_exact(merged, repository, dim, limit=max(1, plan.nlist), text_queries=text_queries)
    store.adopt(merged, plan.kind)
    remove_unused_ivfdata(store.folder, ivfdata)
    shutil.rmtree(work, ignore_errors=True)
    return build_report(plan, f"{plan.why}; {len(ranges)} shards merged on disk ({ivfdata.name})", len(ids),
                        time.perf_counter() - started, merged, image, text)
