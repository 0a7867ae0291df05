"""Check that images, embeddings, sources and the FAISS index agree, id for id and vector for vector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.sql.repository import Repository
from storage.vectors.index import VectorIndex


@dataclass(frozen=True)
class Problems:
    no_vector: list[int]  # images without an embedding
    orphans: list[int]  # images without a source
    missing: list[int]  # embeddings missing from the FAISS index
    extra: list[int]  # FAISS ids with no embedding
    wrong: list[int]  # FAISS vectors unlike the stored ones (exact indexes only)
    duplicates: int  # ids twice in the FAISS index

    def describe(self) -> list[str]:
        found = []
        for label, ids in (("images without an embedding", self.no_vector), ("images without a source", self.orphans),
                           ("embeddings missing from the FAISS index", self.missing),
                           ("FAISS ids with no embedding", self.extra),
                           ("FAISS vectors unlike the stored ones", self.wrong)):
            if ids:
                found.append(f"{len(ids)} {label}, e.g. id {ids[0]}")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate ids in the FAISS index")
        return found


def find_problems(repository: Repository, index: VectorIndex, dim: int) -> Problems:
    images = repository.image_ids()
    embeddings = repository.embedding_ids()
    in_index = index.ids()
    wrong: list[int] = []
    if index.exact:  # approximate indexes (PQ) store lossy vectors: only exact ones are compared value for value
        present = set(map(int, in_index))
        for ids, vectors in repository.iter_embeddings(dim):
            for image_id, vector in zip(ids, vectors, strict=True):
                stored = index.reconstruct(int(image_id)) if int(image_id) in present else None
                if stored is not None and not np.allclose(stored, vector, atol=1e-6):
                    wrong.append(int(image_id))
    return Problems(
        no_vector=[int(i) for i in np.setdiff1d(images, embeddings)],
        orphans=sorted(repository.images_without_sources()),
        missing=[int(i) for i in np.setdiff1d(embeddings, in_index)],
        extra=[int(i) for i in np.setdiff1d(in_index, embeddings)],
        wrong=wrong, duplicates=len(in_index) - len(np.unique(in_index)))
