"""The FAISS inner-product index: IndexIDMap2(IndexFlatIP) whose ids are image ids.

Vectors are L2-normalised upstream, so inner product = cosine. Saved atomically: written to a temp
file in the same folder, fsynced, then swapped in with os.replace, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

from storage.errors import DimensionMismatchError, StorageError

logger = logging.getLogger(__name__)


class VectorIndex:
    """A thin, typed wrapper over one FAISS index with 64-bit ids."""

    def __init__(self, index: faiss.Index) -> None:
        self._index = index

    @classmethod
    def create(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        try:
            return cls(faiss.read_index(str(path)))
        except Exception as exc:  # faiss raises RuntimeError on corrupt or truncated files
            raise StorageError(f"cannot read the FAISS index {path}: {exc}") from exc

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)  # type: ignore[attr-defined]

    def reconstruct(self, image_id: int) -> np.ndarray | None:
        try:
            return np.asarray(self._index.reconstruct(int(image_id)))
        except RuntimeError:
            return None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError(f"vectors of shape {vectors.shape} for a {self.dim}-d index")
        if len(ids):
            self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))  # type: ignore[arg-type]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k'), k' = min(k, ntotal); best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DimensionMismatchError(f"queries of shape {queries.shape} for a {self.dim}-d index")
        k = min(k, self.ntotal)
        if k <= 0:
            empty = np.zeros((queries.shape[0], 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def save(self, path: Path) -> None:
        """Write atomically: temp file + fsync + os.replace (+ fsync of the folder)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(faiss.serialize_index(self._index).tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
