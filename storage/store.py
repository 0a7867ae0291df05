"""The store: one folder with the metadata database and the FAISS index, kept consistent.

Write order: rows and embeddings commit in one SQLite transaction (the source of truth), then the
vectors go into the in-memory FAISS index, which `checkpoint()` saves atomically. After a crash the
saved index may lag behind (or, after deletions, run ahead of) the embeddings table; `open()`
reconciles the two, so FAISS, rows and embeddings always agree once a store is open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import Engine

from storage.db import init_schema, make_engine, session_factory, sqlite_url
from storage.errors import DimensionMismatchError, StorageError
from storage.repository import Manifest, NewImage, Repository, SourceRecord
from storage.vector_index import KINDS, IndexPlan, VectorIndex, bytes_per_vector, plan_index, recall_at_k

logger = logging.getLogger(__name__)

DATABASE_NAME = "medsearch.sqlite"
INDEX_NAME = "index.faiss"
RECALL_TARGET = 0.95
EXACT_FILTER_LIMIT = 200_000  # filtered searches over fewer allowed vectors scan them exactly


@dataclass(frozen=True)
class BuildReport:
    """What `build_index` did and what it measured."""

    kind: str
    why: str
    vectors: int
    seconds: float
    recall_at_10: float  # against exact search on held-out queries (1.0 for an exact index)
    search_effort: int  # nprobe or efSearch chosen
    bytes_per_vector: float


CURRENT_NAME = "CURRENT"  # in a database folder: which generation the API serves
PENDING_NAME = "PENDING"  # a new generation being built
LOCK_NAME = ".writer.lock"


def current_generation(root: Path) -> Path:
    """The folder of the generation in use: `root` itself unless CURRENT names another."""
    pointer = root / CURRENT_NAME
    if pointer.is_file():
        name = pointer.read_text().strip()
        if name:
            return root / name
    return root


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def start_generation(root: Path) -> Path:
    """A folder for a new index generation (resuming one left unfinished by a killed run)."""
    pending = root / PENDING_NAME
    if pending.is_file() and pending.read_text().strip():
        return root / pending.read_text().strip()
    existing = [int(p.name) for p in (root / "generations").glob("*") if p.name.isdigit()]
    name = f"generations/{max(existing, default=0) + 1}"
    (root / name).mkdir(parents=True, exist_ok=True)
    _write_atomically(pending, name)
    return root / name


def finish_generation(root: Path, folder: Path) -> None:
    """Make `folder` the generation in use, in one atomic rename."""
    _write_atomically(root / CURRENT_NAME, folder.relative_to(root).as_posix())
    (root / PENDING_NAME).unlink(missing_ok=True)


def _take_writer_lock(folder: Path) -> IO[bytes]:
    handle = (folder / LOCK_NAME).open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StorageError(f"another medsearch process is writing to {folder} (an indexing run?): wait for it "
                           "to finish; readers such as the API are not affected") from None
    return handle


class Store:
    """Repository + vector index over one folder. Build it at the entry point and pass it in.

    A writer (the indexer) holds an exclusive lock on the folder; readers (the API) open it
    read-only, never write the index file, and `refresh()` to pick up what writers saved."""

    def __init__(self, folder: Path, engine: Engine, repository: Repository, read_only: bool = False) -> None:
        self.folder = folder
        self.engine = engine
        self.repository = repository
        self.read_only = read_only
        self._index: VectorIndex | None = None
        self._lock = threading.RLock()
        self._dirty = False
        self._loaded_signature: tuple[int, int, int] | None = None
        self._lock_file: Any = None

    # -- opening --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, *, create: bool = False, database_url: str | None = None,
             read_only: bool = False, generation: bool = True) -> Store:
        """Open the store in `folder` (its current generation unless `generation` is False; created
        when `create`). Raises StorageError if unusable or if another writer holds it."""
        folder = Path(folder)
        if generation and folder.is_dir():
            folder = current_generation(folder)
        if not folder.is_dir():
            if not create:
                raise StorageError(f"no medsearch database in {folder}: the folder does not exist "
                                   "(run `medsearch-index run ARCHIVE --db FOLDER` first)")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the database folder {folder}: {exc.strerror}") from exc
        database = folder / DATABASE_NAME
        if not create and database_url is None and not database.exists():
            raise StorageError(f"no medsearch database in {folder} (expected {DATABASE_NAME}; run "
                               "`medsearch-index run ARCHIVE --db FOLDER` first)")
        lock_file = None if read_only else _take_writer_lock(folder)
        engine = make_engine(database_url or sqlite_url(database))
        init_schema(engine)
        store = cls(folder, engine, Repository(session_factory(engine)), read_only=read_only)
        store._lock_file = lock_file
        store._load_index()
        return store

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    @property
    def manifest(self) -> Manifest | None:
        return self.repository.get_manifest()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            info = self.index_path.stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _load_index(self) -> None:
        if not self.read_only:  # only the writer may tidy up; a reader could delete a save in progress
            for stale in self.folder.glob(f".{INDEX_NAME}.*.tmp"):  # a save cut short by a crash
                stale.unlink(missing_ok=True)
        self._loaded_signature = self._signature()
        manifest = self.repository.get_manifest()
        if manifest is None:
            return
        index: VectorIndex | None = None
        if self.index_path.exists():
            try:
                index = VectorIndex.load(self.index_path)
                if index.dim != manifest.dim:
                    logger.warning("FAISS index %s is %d-d, manifest says %d-d: rebuilding from embeddings",
                                   self.index_path, index.dim, manifest.dim)
                    index = None
            except StorageError as exc:
                logger.warning("%s; rebuilding it from the embeddings table", exc)
        if index is None and self.repository.get_meta("index_policy") not in (None, "auto", "flat"):
            self._index = VectorIndex.create(manifest.dim)
            self.build_index(self.repository.get_meta("index_policy") or "auto")
            return
        self._index = index or VectorIndex.create(manifest.dim)
        self.reconcile()

    def reconcile(self) -> tuple[int, int]:
        """Make FAISS hold exactly the embeddings table's ids. Returns (added, removed)."""
        manifest = self.repository.get_manifest()
        if manifest is None or self._index is None:
            return 0, 0
        with self._lock:
            stored = self.repository.embedding_ids()
            in_index = self._index.ids()
            missing = np.setdiff1d(stored, in_index, assume_unique=True)
            extra = np.setdiff1d(in_index, stored, assume_unique=True)
            if len(extra) and not self._index.can_remove and self.read_only:
                extra = extra[:0]  # a reader cannot rebuild; rows of deleted ids are filtered out anyway
            if len(extra) and not self._index.can_remove:
                logger.warning("the %s index holds %d deleted vectors: rebuilding it", self._index.kind, len(extra))
                self.build_index(self._index.kind)
                return 0, len(extra)
            if len(extra):
                self._index.remove(extra)
            for start in range(0, len(missing), 10_000):
                ids, vectors = self.repository.get_embeddings(missing[start:start + 10_000].tolist(), manifest.dim)
                self._index.add(ids, vectors)
            if (len(missing) or len(extra)) and not self.read_only:
                logger.warning("FAISS index caught up with the database: %d vectors added, %d removed",
                               len(missing), len(extra))
                self._dirty = True
                self.checkpoint()
            return len(missing), len(extra)

    def refresh(self) -> bool:
        """Readers: load the index file again if a writer replaced it (atomically, so never half
        written), catching up in memory with rows committed since. Returns True if it reloaded."""
        signature = self._signature()
        if signature == self._loaded_signature and (self._index is not None or self.manifest is None):
            return False
        with self._lock:
            self._load_index()
        logger.info("index reloaded: %d vectors", self.ntotal)
        return True

    # -- writing --------------------------------------------------------------------------------------
    def bind_model(self, fingerprint: dict[str, Any]) -> Manifest:
        """Declare the model whose vectors this store holds; refuses a different one (FingerprintMismatchError)."""
        manifest = self.repository.ensure_manifest(fingerprint)
        with self._lock:
            if self._index is None:
                self._index = VectorIndex.create(manifest.dim)
        return manifest

    def write(self, new_images: Sequence[NewImage], links: Sequence[tuple[SourceRecord, int]] = (), *,
              run_id: int | None = None, remove_source_ids: Sequence[int] = (),
              touched: Sequence[tuple[int, int | None, float | None]] = ()) -> list[int]:
        """Commit a batch to the database (one transaction), then bring the in-memory index along.
        Returns the ids of the new images."""
        manifest = self.repository.get_manifest()
        if manifest is None or self._index is None:
            raise StorageError("no model bound to this store: call bind_model() first")
        for new in new_images:
            if new.vector.shape != (manifest.dim,):
                raise DimensionMismatchError(f"a vector of shape {new.vector.shape} for a {manifest.dim}-d index")
        ids, removed = self.repository.write_batch(new_images, links, manifest.fingerprint_key, run_id,
                                                   remove_source_ids, touched)
        with self._lock:
            if removed and not self._index.can_remove:
                self.build_index(self._index.kind)  # rebuilt from the embeddings, new images included
                return ids
            if removed:
                self._index.remove(np.asarray(removed, dtype=np.int64))
            if ids:
                self._index.add(np.asarray(ids, dtype=np.int64), np.vstack([n.vector for n in new_images]))
            self._dirty = self._dirty or bool(ids or removed)
        return ids

    def add(self, records: Sequence[NewImage], *, run_id: int | None = None) -> list[int]:
        """Insert images with their vectors and sources."""
        return self.write(records, run_id=run_id)

    def remove_sources(self, source_ids: Sequence[int]) -> list[int]:
        """Delete sources (images left without any go too, from the index as well). Returns image ids removed."""
        removed = self.repository.remove_sources(source_ids)
        with self._lock:
            if removed and self._index is not None and not self._index.can_remove:
                self.build_index(self._index.kind)
            elif removed and self._index is not None:
                self._index.remove(np.asarray(removed, dtype=np.int64))
                self._dirty = True
        return removed

    def verify(self, repair: bool = False) -> list[str]:
        """Check that images, embeddings, sources and the FAISS index agree, id for id and vector for
        vector. Returns the problems found (after repairing them when `repair`)."""
        manifest = self.repository.get_manifest()
        if manifest is None:
            return []
        problems = []
        images = self.repository.image_ids()
        embeddings = self.repository.embedding_ids()
        orphans = self.repository.images_without_sources()
        no_vector = np.setdiff1d(images, embeddings)
        with self._lock:
            assert self._index is not None
            in_index = self._index.ids()
            missing = np.setdiff1d(embeddings, in_index)
            extra = np.setdiff1d(in_index, embeddings)
            duplicates = len(in_index) - len(np.unique(in_index))
            # approximate indexes (PQ) store lossy vectors: only exact ones are compared value for value
            wrong = [int(i) for i, _ in self._sample_vectors(manifest.dim, in_index)] if self._index.exact else []
        for label, ids in (("images without an embedding", no_vector), ("images without a source", orphans),
                           ("embeddings missing from the FAISS index", missing),
                           ("FAISS ids with no embedding", extra), ("FAISS vectors unlike the stored ones", wrong)):
            if len(ids):
                problems.append(f"{len(ids)} {label}, e.g. id {int(next(iter(ids)))}")
        if duplicates:
            problems.append(f"{duplicates} duplicate ids in the FAISS index")
        if repair and problems:
            broken = sorted(set(map(int, no_vector)) | set(orphans))
            if broken:
                self.repository.delete_images(broken)
            self.rebuild_index()
        return problems

    def _sample_vectors(self, dim: int, in_index: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Ids whose FAISS vector differs from the stored embedding (all ids, checked in chunks)."""
        assert self._index is not None
        wrong = []
        present = set(map(int, in_index))
        for ids, vectors in self.repository.iter_embeddings(dim):
            for image_id, vector in zip(ids, vectors, strict=True):
                if int(image_id) in present:
                    stored = self._index.reconstruct(int(image_id))
                    if stored is not None and not np.allclose(stored, vector, atol=1e-6):
                        wrong.append((int(image_id), vector))
        return wrong

    def rebuild_index(self) -> None:
        """A fresh index of the same kind from the embeddings table, saved atomically."""
        self.build_index(self._index.kind if self._index is not None else "auto")

    def build_index(self, kind: str = "auto", memory_budget: int = 8 * 1024**3, seed: int = 0) -> BuildReport:
        """(Re)build the FAISS index from the stored embeddings, without re-encoding: train it when it
        needs training, raise its search effort until recall@10 against exact search on held-out
        queries reaches 0.95 (or the effort is exhausted), save it atomically. `kind` is auto, flat,
        ivf, ivfpq or hnsw; it is remembered for later rebuilds."""
        manifest = self.repository.get_manifest()
        if manifest is None:
            raise StorageError("nothing indexed yet: run medsearch-index run first")
        if kind != "auto" and kind not in KINDS:
            raise StorageError(f"index kind {kind!r}: expected auto, {', '.join(KINDS)}")
        started = time.perf_counter()
        n = len(self.repository.embedding_ids())
        plan: IndexPlan = plan_index(n, manifest.dim, kind, memory_budget)
        rng = np.random.default_rng(seed)
        train = self._sample_embeddings(manifest.dim, min(n, 100_000), rng)
        fresh = VectorIndex.build(plan, manifest.dim, train if len(train) else np.zeros((1, manifest.dim)))
        exact = VectorIndex.create(manifest.dim) if plan.kind != "flat" else None
        for ids, vectors in self.repository.iter_embeddings(manifest.dim):
            fresh.add(ids, vectors)
            if exact is not None:
                exact.add(ids, vectors)
        recall = 1.0
        if exact is not None and n:
            queries = train[rng.choice(len(train), size=min(200, len(train)), replace=False)]
            queries = queries + rng.normal(scale=0.05, size=queries.shape).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            recall = recall_at_k(fresh, exact, queries, 10)
            limit = plan.nlist if plan.kind in ("ivf", "ivfpq") else 1024
            while recall < RECALL_TARGET and fresh.search_effort() < limit:
                fresh.set_search_effort(min(limit, fresh.search_effort() * 2))
                recall = recall_at_k(fresh, exact, queries, 10)
        with self._lock:
            self._index = fresh
            self._dirty = True
            self.checkpoint()
        self.repository.set_meta("index_policy", kind)
        report = BuildReport(plan.kind, plan.why, n, time.perf_counter() - started, recall, fresh.search_effort(),
                             bytes_per_vector(plan.kind, manifest.dim, plan.pq_m))
        logger.info("built %s index of %d vectors in %.1f s, recall@10 %.3f", plan.kind, n, report.seconds, recall)
        return report

    def maybe_grow_index(self, memory_budget: int = 8 * 1024**3) -> BuildReport | None:
        """Under the automatic policy, rebuild when the index's size calls for another kind."""
        if self._index is None or self.repository.get_meta("index_policy") not in (None, "auto"):
            return None
        manifest = self.repository.get_manifest()
        if manifest is None:
            return None
        wanted = plan_index(self._index.ntotal, manifest.dim, "auto", memory_budget)
        return self.build_index("auto", memory_budget) if wanted.kind != self._index.kind else None

    def _sample_embeddings(self, dim: int, size: int, rng: np.random.Generator) -> np.ndarray:
        ids = self.repository.embedding_ids()
        if len(ids) == 0:
            return np.zeros((0, dim), dtype=np.float32)
        chosen = np.sort(rng.choice(ids, size=min(size, len(ids)), replace=False))
        chunks = [self.repository.get_embeddings(chosen[i:i + 10_000].tolist(), dim)[1]
                  for i in range(0, len(chosen), 10_000)]
        return np.vstack(chunks)

    @property
    def index_kind(self) -> str:
        return self._index.kind if self._index is not None else "none"

    def checkpoint(self) -> None:
        """Save the FAISS index atomically if it changed."""
        with self._lock:
            if self._index is not None and self._dirty and not self.read_only:
                self._index.save(self.index_path)
                self._dirty = False

    # -- reading --------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self._index.ntotal if self._index is not None else 0

    @property
    def dim(self) -> int | None:
        manifest = self.repository.get_manifest()
        return manifest.dim if manifest else None

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """For each query row, up to k (image id, cosine) pairs, best first, among `allowed` ids when
        given. Filtered search is exact: an ID selector on the exact index, or an exact scan of the
        allowed vectors when the index is approximate (up to EXACT_FILTER_LIMIT of them)."""
        if self._index is None or (allowed is not None and len(allowed) == 0):
            return [[] for _ in range(len(queries))]
        with self._lock:
            if allowed is None:
                scores, ids = self._index.search(queries, k)
            elif self._index.exact or len(allowed) > EXACT_FILTER_LIMIT:
                scores, ids = self._index.search(queries, k, allowed)
            else:
                return self._scan(queries, k, allowed)
        return [[(int(i), float(s)) for i, s in zip(id_row, score_row, strict=True) if i >= 0]
                for id_row, score_row in zip(ids, scores, strict=True)]

    def _scan(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> list[list[tuple[int, float]]]:
        manifest = self.repository.get_manifest()
        assert manifest is not None
        best: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        for start in range(0, len(allowed), 20_000):
            ids, vectors = self.repository.get_embeddings(allowed[start:start + 20_000].tolist(), manifest.dim)
            scores = np.asarray(queries, dtype=np.float32) @ vectors.T
            for row, row_scores in enumerate(scores):
                top = np.argsort(-row_scores, kind="stable")[:k]
                merged = best[row] + [(int(ids[i]), float(row_scores[i])) for i in top]
                best[row] = sorted(merged, key=lambda pair: -pair[1])[:k]
        return best

    def vector_of(self, image_id: int) -> np.ndarray | None:
        """The stored embedding of an indexed image."""
        manifest = self.repository.get_manifest()
        if manifest is None:
            return None
        ids, vectors = self.repository.get_embeddings([image_id], manifest.dim)
        return vectors[0] if len(ids) else None

    def close(self) -> None:
        self.checkpoint()
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the writer lock
            self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
