"""The store: the vector index of one database folder, kept consistent with the repository.

Write order: rows and embeddings commit in one transaction (the source of truth), then the vectors go
into the in-memory FAISS index, which `checkpoint()` saves: the changes since the last checkpoint appended
to the index's log (storage.vectors.delta), or the whole index atomically once the log has grown to half the
saved index (so checkpoints cost what was added, in total as well). After a crash the saved index
may lag behind (or, after deletions, run ahead of) the embeddings table; opening reconciles the two,
so FAISS, rows and embeddings always agree once a store is open. A store opened read-only (the API,
`runs`, `verify` without --repair) never writes a file.

Entry points open both with storage.opening.open_index and pass the store and the repository on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from storage.errors import DimensionMismatchError, StorageError
from storage.exact_scan import exact_scores, ids_at_least, rerank, top_k
from storage.layout import remove_stale_temp_files
from storage.records import FileIssue, Link, Manifest, NewImage, RemovalPreview, Selection, UnitRecord
from storage.sql.repository import Repository
from storage.vectors import delta
from storage.vectors.build import BuildReport, build_index
from storage.vectors.effort import QueryKind
from storage.vectors.filtered import direct_search, nearest_allowed
from storage.vectors.id_journal import Change, Mark
from storage.vectors.index import VectorIndex
from storage.vectors.plan import plan_index
from storage.verify import find_problems

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
DATABASE_ID = "database_id"
EXACT_FILTER_LIMIT = 200_000  # filtered searches over fewer allowed vectors scan them exactly


class Store:
    """The FAISS index over one folder's repository. A writer (the indexer) holds the folder's lock;
    readers (the API) never write the index file and `refresh()` to pick up what writers saved."""

    def __init__(self, folder: Path, repository: Repository, *, read_only: bool = False,
                 lock_file: IO[bytes] | None = None) -> None:
        self.folder = folder
        self._repository = repository
        self.read_only = read_only
        self._lock_file = lock_file
        self._database_id = repository.get_meta(DATABASE_ID) or repository.engine.url.render_as_string(False)
        self._index: VectorIndex | None = None
        self._lock = threading.RLock()
        self._dirty = False
        self._loaded_signature: tuple[int, ...] | None = None
        self._log = delta.IndexLog(self.index_path, self._database_id)
        self._load_index()

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    @property
    def manifest(self) -> Manifest | None:
        return self._repository.get_manifest()

    def _signature(self) -> tuple[int, ...] | None:
        try:
            info = self.index_path.stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _load_index(self) -> None:
        if not self.read_only:  # only the writer may tidy up; a reader could delete a save in progress
            remove_stale_temp_files(self.folder, INDEX_NAME)
        self._loaded_signature = self._signature()
        self._log.follow(None, 0)  # until a base is loaded: none to follow
        manifest = self._repository.get_manifest()
        if manifest is None:
            return
        index: VectorIndex | None = None
        if self.index_path.exists():
            try:
                index, header = VectorIndex.load_with_header(self.index_path)
                owner = header.get("database_id")
                self._log.follow(header.get("token"), index.ntotal)
                if owner == self._database_id and index.dim == manifest.dim:
                    self._log.replay(index)
                if owner != self._database_id:
                    logger.warning("%s was not built from this database (%s): rebuilding it from the embeddings "
                                   "table", self.index_path, "no owner mark" if owner is None else "another one")
                    index = None
                elif index.dim != manifest.dim:
                    logger.warning("FAISS index %s is %d-d, manifest says %d-d: rebuilding from embeddings",
                                   self.index_path, index.dim, manifest.dim)
                    index = None
            except StorageError as exc:
                logger.warning("%s; rebuilding it from the embeddings table", exc)
        policy = self._repository.get_meta("index_policy")
        if index is None and policy not in (None, "auto", "flat"):
            self.build_index(policy or "auto")
            return
        self._index = index or VectorIndex.create(manifest.dim)
        self.reconcile()

    def reconcile(self) -> tuple[int, int]:
        """Make FAISS hold exactly the embeddings table's ids. Returns (added, removed)."""
        manifest = self._repository.get_manifest()
        if manifest is None or self._index is None:
            return 0, 0
        with self._lock:
            stored = self._repository.embedding_ids()
            in_index = self._index.ids()
            missing = np.setdiff1d(stored, in_index, assume_unique=True)
            extra = np.setdiff1d(in_index, stored, assume_unique=True)
            if len(extra) and not self._index.can_remove:
                logger.warning("the %s index holds %d deleted vectors: rebuilding it", self._index.kind, len(extra))
                self.build_index(self._index.kind)
                return 0, len(extra)
            if len(extra):
                self._index.remove(extra)
            for start in range(0, len(missing), 10_000):
                ids, vectors = self._repository.get_embeddings(missing[start:start + 10_000].tolist(), manifest.dim)
                self._index.add(ids, vectors)
            if len(missing) or len(extra):
                if not self.read_only:
                    logger.warning("FAISS index caught up with the database: %d vectors added, %d removed",
                                   len(missing), len(extra))
                if self.read_only:  # the writer logs these later: they are not added twice then
                    self._log.caught_up.update(missing.tolist())
                else:
                    self._log.forget()  # saved whole
                self._dirty = True
                self.checkpoint()
            return len(missing), len(extra)

    def refresh(self) -> bool:
        """Readers: load the index file again if a writer replaced it (atomically, so never half
        written), catching up in memory with rows committed since. Returns True if it reloaded."""
        signature = self._signature()
        if signature == self._loaded_signature and (self._index is not None or self.manifest is None):
            if self._index is None or not self._log.grown():
                return False
            with self._lock:  # the same base, a longer log: apply what was appended
                applied = self._log.replay(self._index, self._log.end)
            logger.info("index caught up from its log: %d records, %d vectors", applied, self.ntotal)
            return applied > 0
        with self._lock:
            previous = self._index
            self._load_index()
            self._continue_journal(previous)
        logger.info("index reloaded: %d vectors", self.ntotal)
        return True

    def _continue_journal(self, previous: VectorIndex | None) -> None:
        """A reloaded index (a writer saved it whole) continues the journal of the one it replaces, as the
        ids it gained and lost, so that what readers derive from every vector follows it incrementally."""
        current = self._index
        if previous is None or current is None or previous is current or previous.dim != current.dim:
            return
        before, after = previous.ids(), current.ids()
        journal = previous.journal
        journal.note(np.setdiff1d(after, before), added=True)
        journal.note(np.setdiff1d(before, after), added=False)
        current.journal = journal

    # -- writing --------------------------------------------------------------------------------------
    def bind_model(self, fingerprint: dict[str, Any]) -> Manifest:
        """Declare the model whose vectors this store holds; refuses a different one (FingerprintMismatchError)."""
        manifest = self._repository.ensure_manifest(fingerprint)
        with self._lock:
            if self._index is None:
                self._index = VectorIndex.create(manifest.dim)
        return manifest

    def write(self, new_images: Sequence[NewImage], links: Sequence[Link] = (), *, run_id: int | None = None,
              remove_source_ids: Sequence[int] = (), touched: Sequence[tuple[int, int | None, float | None]] = (),
              issues: Sequence[FileIssue] = (), unit: UnitRecord | None = None) -> list[int] | None:
        """Commit a batch to the database (one transaction, see Repository.write_batch), then bring the
        in-memory index along. Returns the ids of the new images; None when `unit` was committed before."""
        manifest = self._repository.get_manifest()
        if manifest is None or self._index is None:
            raise StorageError("no model bound to this store: call bind_model() first")
        for new in new_images:
            if new.vector.shape != (manifest.dim,):
                raise DimensionMismatchError(f"a vector of shape {new.vector.shape} for a {manifest.dim}-d index")
        written = self._repository.write_batch(new_images, links, manifest.fingerprint_key, run_id,
                                               remove_source_ids, touched, issues, unit)
        if written is None:
            return None
        ids, removed = written
        with self._lock:
            self._drop(removed)
            if ids:
                added = np.asarray(ids, dtype=np.int64)
                vectors = np.vstack([n.vector for n in new_images])
                self._index.add(added, vectors)
                self._log.changes.append(delta.Change(added, vectors))
            self._dirty = self._dirty or bool(ids or removed)
        return ids

    def _drop(self, image_ids: Sequence[int]) -> None:
        """Take removed images out of the vector index (HNSW cannot remove: it is rebuilt)."""
        if not len(image_ids) or self._index is None:
            return
        if self._index.can_remove:
            self._index.remove(np.asarray(image_ids, dtype=np.int64))
            self._log.changes.append(delta.Change(np.asarray(image_ids, dtype=np.int64), None))
            self._dirty = True
        else:
            self.build_index(self._index.kind)

    def remove_sources(self, source_ids: Sequence[int]) -> list[int]:
        """Delete sources (images left without any go too, from the index as well). Returns image ids removed."""
        removed = self._repository.remove_sources(source_ids)
        with self._lock:
            self._drop(removed)
        return removed

    def remove(self, selection: Selection, note: str | None = None, *, compact: bool = True) -> RemovalPreview:
        """Remove every trace of what `selection` names (rows, vectors, file records) and exclude it from
        later runs. Costs what it removes: the rows go in one transaction and the vectors' removal is
        appended to the index's log, which readers apply at their next request. With `compact` (else
        call `compact()`), the files are then rewritten so that none keeps anything removed."""
        preview, removed = self._repository.remove(selection, note)
        with self._lock:
            self._drop(removed)
        self.checkpoint()
        if compact:
            self.compact()
        return preview

    def compact(self) -> None:
        """Rewrite what may still hold removed data: the index saved whole (the log started again), the
        full-text index merged (no old segment keeps a removed report's words), the database's log folded in."""
        with self._lock:
            self._dirty = True
            self._log.forget()  # saved whole: no file keeps the removed vectors
        self.checkpoint()
        self._repository.optimize_reports()
        self._repository.compact()

    def verify(self, repair: bool = False) -> list[str]:
        """Problems found between images, embeddings, sources and the FAISS index (after repairing them
        when `repair`)."""
        manifest = self._repository.get_manifest()
        if manifest is None or self._index is None:
            return []
        with self._lock:
            problems = find_problems(self._repository, self._index, manifest.dim)
        found = problems.describe()
        labels = self._repository.label_problems()
        reports = self._repository.report_problems()
        if repair and found:
            broken = sorted(set(problems.no_vector) | set(problems.orphans))
            if broken:
                self._repository.delete_images(broken)
            self.build_index(self._index.kind)
        if repair and labels:
            self._repository.repair_labels(labels)
        if repair and reports:
            self._repository.rebuild_report_index()
            if self._repository.reports is not None:
                self._repository.backfill_reports(stale=True)
        wrong_labels = [f"{len(labels)} images whose label index (image_labels) differs from their labels, e.g. "
                        f"id {labels[0]}"] if labels else []
        return found + wrong_labels + reports

    def build_index(self, kind: str = "auto", memory_budget: int = 8 * 1024**3, seed: int = 0,
                    text_queries: np.ndarray | None = None) -> BuildReport:
        """(Re)build the FAISS index from the stored embeddings without re-encoding (storage.vectors.build),
        its effort tuned for image queries and for `text_queries` (the model's text embeddings) where
        given; save it atomically and remember `kind` for later rebuilds."""
        manifest = self._repository.get_manifest()
        if manifest is None:
            raise StorageError("nothing indexed yet: run medsearch-index run first")
        fresh, report = build_index(self._repository, manifest.dim, kind, memory_budget, seed, text_queries)
        with self._lock:
            self._index = fresh
            self._dirty = True
            self._log.forget()
            self.checkpoint()
        if not self.read_only:
            self._repository.set_meta("index_policy", kind)
        return report

    def adopt(self, index: VectorIndex, policy: str) -> None:
        """Serve `index` from now on (built elsewhere, for example merged on disk): saved atomically, so
        readers switch to it whole; `policy` is the kind later rebuilds use."""
        with self._lock:
            self._index = index
            self._dirty = True
            self._log.forget()
            self.checkpoint()
        self._repository.set_meta("index_policy", policy)

    def maybe_grow_index(self, memory_budget: int = 8 * 1024**3,
                         text_queries: Callable[[], np.ndarray] | None = None) -> BuildReport | None:
        """Under the automatic policy, rebuild when the index's size calls for another kind (its text
        tuning queries made by `text_queries` only then)."""
        if self._index is None or self._repository.get_meta("index_policy") not in (None, "auto"):
            return None
        manifest = self._repository.get_manifest()
        if manifest is None:
            return None
        wanted = plan_index(self._index.ntotal, manifest.dim, "auto", memory_budget)
        if wanted.kind == self._index.kind:
            return None
        return self.build_index("auto", memory_budget, text_queries=text_queries() if text_queries else None)

    @property
    def index_kind(self) -> str:
        return self._index.kind if self._index is not None else "none"

    def checkpoint(self) -> None:
        """Save what changed (never by a read-only store): appended to the log, or the whole index when
        there is no base to follow yet or the log holds half as many vectors as the base."""
        with self._lock:
            if self._index is None or not self._dirty or self.read_only:
                return
            index = self._index
            self._log.save(index, lambda token: index.save(self.index_path, self._database_id, token))
            self._loaded_signature = self._signature()
            self._dirty = False

    # -- reading --------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self._index.ntotal if self._index is not None else 0

    @property
    def dim(self) -> int | None:
        manifest = self._repository.get_manifest()
        return manifest.dim if manifest else None

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, kind: QueryKind = "image"
               ) -> list[list[tuple[int, float]]]:
        """For each query row, up to k (image id, cosine) pairs, best first, among `allowed` ids when
        given, at the effort tuned for the queries' `kind` (storage/vectors/effort.py). Filtered search is
        exact: where the index holds the vectors (storage/vectors/filtered.py), the allowed ones scored by id
        where they are few, the nearest vectors checked against them where they are a large share (at the
        tuned effort past EXACT_FILTER_LIMIT on IVF-Flat, as the selector would be); else an ID selector on
        the exact index, every inverted list of an IVF-Flat index probed with one (its lists hold the
        vectors), or an exact scan of the allowed vectors read from the database for the other approximate
        kinds (up to EXACT_FILTER_LIMIT of them)."""
        if self._index is None or (allowed is not None and len(allowed) == 0):
            return [[] for _ in range(len(queries))]
        with self._lock:
            lossy = self._index.lossy  # compressed codes find candidates; their stored vectors rank them
            fetch = self._index.candidates(k, kind)
            dim = self._index.dim
            if allowed is None:
                scores, ids = self._index.search(queries, fetch, kind=kind)
            elif (direct := direct_search(self._index, queries, fetch, allowed)) is not None:
                scores, ids = direct
            elif (nearest := nearest_allowed(self._index, queries, fetch, allowed, kind, EXACT_FILTER_LIMIT)
                  ) is not None:
                scores, ids = nearest
            elif self._index.exact or len(allowed) > EXACT_FILTER_LIMIT:
                scores, ids = self._index.search(queries, fetch, allowed, kind=kind)
            elif (every := self._index.every_list()) is not None:
                scores, ids = self._index.search(queries, fetch, allowed, kind=kind, effort=every)
            else:
                return top_k(exact_scores(self._repository, dim, queries, allowed), len(queries), k)
        if lossy:
            return rerank(self._repository, dim, queries, ids, k)
        return [[(int(i), float(s)) for i, s in zip(id_row, score_row, strict=True) if i >= 0]
                for id_row, score_row in zip(ids, scores, strict=True)]

    def ids_scoring(self, query: np.ndarray, min_score: float, allowed: np.ndarray | None = None,
                    kind: QueryKind = "image") -> np.ndarray:
        """Every id (among `allowed`) that `search` could return for the query (one row) with a cosine of
        at least `min_score`: the ones search pages through. Exact where search is exact."""
        if self._index is None or (allowed is not None and len(allowed) == 0):
            return np.empty(0, dtype=np.int64)
        with self._lock:
            dim = self._index.dim
            if allowed is None or self._index.exact or len(allowed) > EXACT_FILTER_LIMIT:
                found = np.sort(self._index.ids_scoring(query, min_score, allowed, kind))
                if not self._index.lossy:
                    return found
                allowed = found  # approximate scores: keep those whose exact cosine reaches min_score
        return ids_at_least(exact_scores(self._repository, dim, query.reshape(1, -1), allowed), min_score)

    def id_changes(self, mark: Mark | None) -> tuple[Mark | None, list[Change] | None]:
        """(the index's mark now, its id changes since `mark`, or None when the reader must start again from
        every stored vector): see storage/vectors/id_journal.py."""
        with self._lock:
            if self._index is None:
                return None, None
            return self._index.journal.mark, self._index.journal.since(mark)

    def vector_of(self, image_id: int) -> np.ndarray | None:
        """The stored embedding of an indexed image."""
        dim = self.dim
        if dim is None:
            return None
        ids, vectors = self._repository.get_embeddings([image_id], dim)
        return vectors[0] if len(ids) else None

    def close(self) -> None:
        self.checkpoint()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the writer lock
            self._lock_file = None
