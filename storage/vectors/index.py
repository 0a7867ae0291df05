"""FAISS inner-product indexes whose ids are image ids: exact (Flat) or approximate (IVF-Flat, IVF-SQ8,
IVF-RaBitQ, IVF-PQ, HNSW), built and trained from the stored embeddings.

Vectors are L2-normalised upstream, so inner product = cosine. Saved atomically (storage.layout), with
a small header naming the database the index was built from, so that a store never serves an index
file copied from another database (ids that happen to match would return another patient's image).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from storage.errors import DimensionMismatchError, StorageError
from storage.layout import write_atomically
from storage.vectors.effort import Effort, Efforts, QueryKind
from storage.vectors.id_journal import IdJournal
from storage.vectors.ondisk_path import relocated
from storage.vectors.plan import HNSW_M, IVF_KINDS, LOSSY_KINDS, IndexKind, IndexPlan

logger = logging.getLogger(__name__)
faiss: Any = _faiss  # its shipped stubs miss most SWIG attributes (DirectMap, hnsw, invlists...)

RABITQ_QUERY_BITS = 8  # the query's scalar quantization when it is compared with RaBitQ codes
RERANK_CANDIDATES = 100  # a lossy index's candidates per query, re-ranked by exact cosine (Store.search)
EXACT_QUERY_BLOCK = 64  # queries scored together by the exact BLAS path (a 64 x n block of scores)
MAGIC = b"MEDSRCH\x01"  # then a 4-byte little-endian header length, the JSON header, the FAISS bytes


class VectorIndex:
    """One FAISS index with 64-bit ids and a small, typed surface."""

    def __init__(self, index: faiss.Index) -> None:
        self._index: Any = index  # FAISS's SWIG classes are only partly typed
        # removed from an on-disk index: FAISS's on-disk lists corrupt neighbouring lists when they shrink,
        # so removed ids stay in them and every search leaves them out (a rebuild compacts; after a reload
        # the store finds them again as ids without an embedding)
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._flat_ids: np.ndarray | None = None  # the id of each row of an exact index (cached)
        self.efforts: Efforts | None = None  # per query kind, as build_index tuned them (None: FAISS's own)
        self.journal = IdJournal()  # the ids added and removed since this object was made

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def build(cls, plan: IndexPlan, dim: int, train: np.ndarray, hnsw_m: int = HNSW_M) -> VectorIndex:
        """An empty index of `plan`'s kind, trained on `train` when it needs training."""
        if plan.kind == "flat":
            return cls.create(dim)
        if plan.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80 if hnsw_m >= 32 else 40
            hnsw.hnsw.efSearch = 64
            return cls(faiss.IndexIDMap2(hnsw))
        nlist = max(1, min(plan.nlist, len(train) // 39 or 1))  # FAISS wants ~39 training points per list
        quantizer = faiss.IndexFlatIP(dim)
        if plan.kind == "ivf":
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif plan.kind == "ivfsq8":  # a byte a dimension, scaled per dimension over the training range
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                faiss.METRIC_INNER_PRODUCT)
        elif plan.kind == "ivfrabitq":
            ivf = faiss.IndexIVFRaBitQ(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.qb = RABITQ_QUERY_BITS
        else:
            bits = 8 if len(train) >= 256 * 39 else max(1, int(math.log2(max(2, len(train) // 39))))
            ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, plan.pq_m, bits, faiss.METRIC_INNER_PRODUCT)
        ivf.train(np.ascontiguousarray(train, dtype=np.float32))
        ivf.nprobe = max(1, nlist // 16)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
        ivf.own_fields = True
        quantizer.this.disown()
        return cls(ivf)

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, str | None]:
        """The index in `path` and the id of the database it was built from (None: a file without the
        header, written before medsearch marked its index files)."""
        index, header = cls.load_with_header(path)
        return index, header.get("database_id")

    @classmethod
    def load_with_header(cls, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        """The index in `path` and its header (database_id, kind, ntotal, token: storage.vectors.delta)."""
        try:
            data = path.read_bytes()
            header: dict[str, Any] = {}
            if data.startswith(MAGIC):
                (length,) = struct.unpack_from("<I", data, len(MAGIC))
                start = len(MAGIC) + 4
                header = json.loads(data[start:start + length])
                data = data[start + length:]
            data = relocated(data, path.parent)  # on-disk lists: the file beside this one
            index = cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))
            if header.get("efforts") is not None:
                index.efforts = Efforts.from_json(header["efforts"])
            return index, header
        except Exception as exc:  # faiss raises RuntimeError on corrupt or truncated files
            raise StorageError(f"cannot read the FAISS index {path}: {exc}") from exc

    def raw_bytes(self) -> bytes:
        """The index serialised by FAISS (what another process deserialises)."""
        return bytes(faiss.serialize_index(self._index).tobytes())

    @property
    def raw(self) -> Any:
        """The FAISS index itself (for FAISS's own tools, such as the on-disk merge)."""
        return self._index

    # -- description ----------------------------------------------------------------------------------
    @property
    def kind(self) -> IndexKind:
        inner = faiss.downcast_index(self._index.index) if isinstance(self._index, faiss.IndexIDMap2) else (
            faiss.downcast_index(self._index))
        if isinstance(inner, faiss.IndexHNSWFlat):
            return "hnsw"
        if isinstance(inner, faiss.IndexIVFPQ):
            return "ivfpq"
        if isinstance(inner, faiss.IndexIVFRaBitQ):
            return "ivfrabitq"
        if isinstance(inner, faiss.IndexIVFScalarQuantizer):
            return "ivfsq8"
        if isinstance(inner, faiss.IndexIVFFlat):
            return "ivf"
        return "flat"

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def every_list(self) -> Effort | None:
        """The effort that makes a filtered IVF-Flat search exact: every inverted list probed (the lists hold
        the vectors themselves, so this is an exact scan of the allowed ones in memory); None otherwise."""
        return Effort(faiss.extract_index_ivf(self._index).nlist) if self.kind == "ivf" else None

    @property
    def lossy(self) -> bool:
        """Compressed codes: its scores are approximate, so its results are re-ranked from full vectors."""
        return self.kind in LOSSY_KINDS

    def candidates(self, k: int, kind: QueryKind = "image") -> int:
        """How many results to ask for so that the k best survive re-ranking (k where scores are exact)."""
        effort = self.effort(kind)
        return max(effort.rerank if effort is not None and effort.rerank else RERANK_CANDIDATES, 4 * k) \
            if self.lossy else k

    def effort(self, kind: QueryKind) -> Effort | None:
        """The effort tuned for this kind of query (None: FAISS's own setting, `search_effort`)."""
        return self.efforts.of(kind) if self.efforts is not None and not self.exact else None

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def on_disk(self) -> bool:
        """IVF lists in a file of their own (storage/vectors/ondisk.py), mapped into memory."""
        if isinstance(self._index, faiss.IndexIDMap2) or self.kind not in IVF_KINDS:
            return False
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self._index).invlists)
        return isinstance(lists, faiss.OnDiskInvertedLists)

    @property
    def can_remove(self) -> bool:
        return self.kind != "hnsw"

    def ids(self) -> np.ndarray:
        if isinstance(self._index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        found = self._list_ids()
        return np.setdiff1d(found, self._tombstones) if len(self._tombstones) else found

    def _list_ids(self) -> np.ndarray:
        ivf = faiss.extract_index_ivf(self._index)
        lists = ivf.invlists
        chunks = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                  for i in range(ivf.nlist) if lists.list_size(i)]
        return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)

    def reconstruct(self, image_id: int) -> np.ndarray | None:
        try:
            return np.asarray(self._index.reconstruct(int(image_id)))
        except RuntimeError:
            return None

    def set_search_effort(self, effort: int) -> None:
        """nprobe (IVF) or efSearch (HNSW); no effect on exact indexes."""
        if self.kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = effort
        elif self.kind in IVF_KINDS:
            faiss.extract_index_ivf(self._index).nprobe = effort

    def search_effort(self) -> int:
        if self.kind == "hnsw":
            return int(faiss.downcast_index(self._index.index).hnsw.efSearch)
        if self.kind in IVF_KINDS:
            return int(faiss.extract_index_ivf(self._index).nprobe)
        return 0

    # -- changes --------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError(f"vectors of shape {vectors.shape} for a {self.dim}-d index")
        if len(ids):
            self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
            self._flat_ids = None
            self.journal.note(ids, added=True)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids. HNSW cannot remove: the caller rebuilds it (see `can_remove`)."""
        if not len(ids):
            return 0
        if not self.can_remove:
            raise StorageError("an HNSW index cannot remove vectors: rebuild it")
        wanted = np.ascontiguousarray(ids, dtype=np.int64)
        self.journal.note(wanted, added=False)
        if self.on_disk:
            wanted = np.setdiff1d(np.intersect1d(wanted, self._list_ids()), self._tombstones)
            self._tombstones = np.union1d(self._tombstones, wanted)
            return len(wanted)
        if isinstance(self._index, faiss.IndexIDMap2):
            self._flat_ids = None
            return int(self._index.remove_ids(faiss.IDSelectorBatch(wanted)))
        # IVF with a hashtable direct map removes only through an IDSelectorArray
        return int(self._index.remove_ids(faiss.IDSelectorArray(len(wanted), faiss.swig_ptr(wanted))))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, kind: QueryKind = "image",
               effort: Effort | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k'), k' = min(k, ntotal); best first; missing slots have id -1.
        With `allowed`, only those ids are considered (inside the search, not after it). The effort is
        `effort`, else the one tuned for `kind`."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DimensionMismatchError(f"queries of shape {queries.shape} for a {self.dim}-d index")
        k = min(k, self.ntotal)
        if k <= 0:
            empty = np.zeros((queries.shape[0], 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if allowed is None and self.exact:
            return self._exact_blas(queries, k)
        if self.kind in IVF_KINDS:
            # one query: split its inverted lists over the threads (FAISS splits over queries by default,
            # which leaves one core idle for a single query; same results either way). 1M x 1152, 2 cores,
            # nprobe 105: IVF-Flat 7.8 -> 5.4 ms, IVF-SQ8 4.6 -> 2.6, IVF-RaBitQ 2.4 -> 1.6
            faiss.extract_index_ivf(self._index).parallel_mode = 1 if len(queries) == 1 else 0
        params = self._params(allowed, effort or self.effort(kind))
        scores, ids = self._index.search(queries, k) if params is None else self._index.search(queries, k,
                                                                                               params=params)
        return scores, ids

    def _exact_blas(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search as BLAS matrix products over the flat index's own storage (no copy): FAISS's
        Flat scans one query on one thread and takes BLAS only for very large batches, so this is what
        makes a single exact query as fast as NumPy's product (bench/search_bench.py). Same results."""
        flat = faiss.downcast_index(self._index.index)
        n = int(flat.ntotal)
        stored = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        if self._flat_ids is None:
            self._flat_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        all_scores = np.empty((len(queries), k), dtype=np.float32)
        all_ids = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), EXACT_QUERY_BLOCK):
            block = queries[start:start + EXACT_QUERY_BLOCK]
            scores = block @ stored.T
            top = np.argpartition(scores, n - k, axis=1)[:, n - k:] if k < n else np.tile(np.arange(n), (len(block), 1))
            chosen = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-chosen, axis=1, kind="stable")
            all_scores[start:start + len(block)] = np.take_along_axis(chosen, order, axis=1)
            all_ids[start:start + len(block)] = self._flat_ids[np.take_along_axis(top, order, axis=1)]
        return all_scores, all_ids

    def ids_scoring(self, query: np.ndarray, min_score: float, allowed: np.ndarray | None = None,
                    kind: QueryKind = "image") -> np.ndarray:
        """Every id (among `allowed`) that a search for the query (one row) can find with a score of at
        least `min_score`: a FAISS range search with the same parameters as `search`."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise DimensionMismatchError(f"a query of shape {query.shape} for a {self.dim}-d index")
        if self.ntotal == 0:
            return np.empty(0, dtype=np.int64)
        radius = float(np.nextafter(np.float32(min_score), np.float32(-np.inf)))  # FAISS keeps scores > radius
        params = self._params(allowed, self.effort(kind))
        _, _, ids = (self._index.range_search(query, radius) if params is None
                     else self._index.range_search(query, radius, params=params))
        return np.asarray(ids, dtype=np.int64)

    def _params(self, allowed: np.ndarray | None, effort: Effort | None = None) -> Any:
        """Search parameters: the effort, restricted to `allowed` ids, leaving out tombstones; None when
        none of them applies."""
        probes = effort.probes if effort is not None else self.search_effort()
        if allowed is None and not len(self._tombstones):
            if effort is None or self.exact:
                return None
            return faiss.SearchParametersHNSW(efSearch=probes) if self.kind == "hnsw" else \
                faiss.SearchParametersIVF(nprobe=probes)
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        else:
            removed = faiss.IDSelectorBatch(self._tombstones)
            selector = faiss.IDSelectorNot(removed)
            selector.referenced = removed  # keep the inner selector alive as long as the outer one
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=probes)
        if self.kind in IVF_KINDS:
            return faiss.SearchParametersIVF(sel=selector, nprobe=probes)
        return faiss.SearchParameters(sel=selector)

    def save(self, path: Path, owner: str, token: str | None = None) -> None:
        """Write atomically, marked with the id of the database (`owner`) it was built from and the
        token its log of later changes names (storage.vectors.delta)."""
        header = json.dumps({"database_id": owner, "kind": self.kind, "ntotal": self.ntotal, "token": token,
                             "efforts": self.efforts.to_json() if self.efforts is not None else None}).encode()

        def write(handle: Any) -> None:
            handle.write(MAGIC + struct.pack("<I", len(header)) + header)
            failed: list[OSError] = []

            def sink(data: bytes) -> None:
                try:
                    handle.write(data)
                except OSError as exc:  # FAISS turns it into a RuntimeError: kept to raise as it was
                    failed.append(exc)
                    raise

            # streamed to the file in FAISS's chunks: no second copy of the index in memory while it saves
            writer = faiss.PyCallbackIOWriter(sink)
            try:
                faiss.write_index(self._index, writer)
            except RuntimeError:
                if failed:
                    raise failed[0] from None
                raise
            finally:
                del writer

        write_atomically(path, write)


def recall_at_k(approximate: VectorIndex, exact: VectorIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k that the approximate index returns."""
    _, truth = exact.search(queries, k)
    _, found = approximate.search(queries, k)
    hits = [len(set(t[t >= 0]) & set(f[f >= 0])) / max(1, len(t[t >= 0])) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)) if hits else 1.0
