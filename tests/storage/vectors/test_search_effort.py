"""The vector index's search effort tuned per query kind (storage/vectors/effort.py, index_build.py):
text-like queries (between the image clusters, as text embeddings lie away from image embeddings)
need more effort than image queries, the build finds both, the index file keeps them, and every
search uses its kind's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.opening import open_index
from storage.vectors.build import recall_per_query
from storage.vectors.effort import Effort, Efforts
from storage.vectors.index import VectorIndex
from tests.storage.test_store import fingerprint, records

DIM, CLUSTERS = 32, 60


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors like image embeddings, and text-like queries: blends of several clusters'
    centres, off every cluster, so that their neighbours spread over many inverted lists."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, DIM))
    draw = np.random.default_rng(seed)
    vectors = centres[draw.integers(0, CLUSTERS, n)] + 0.3 * draw.normal(size=(n, DIM))
    mix = draw.dirichlet(np.ones(CLUSTERS) * 0.3, size=400)
    texts = mix @ centres + 0.3 * draw.normal(size=(400, DIM))
    return tuple(x.astype(np.float32) / np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
                 for x in (vectors, texts))  # type: ignore[return-value]


def exact(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1)[:, :k]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray, list[int]]:
    vectors, texts = data(12_000, 1)
    db = tmp_path_factory.mktemp("efforts") / "db"
    with open_index(db, create=True) as (store, _):
        store.bind_model(fingerprint(dim=DIM))
        ids = store.write(records(len(vectors), vectors=vectors)) or []
    return db, vectors, texts, ids


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8", "ivfrabitq", "hnsw"])
def test_text_queries_get_their_own_effort_and_reach_the_recall(stored, kind: str):
    db, vectors, texts, ids = stored
    id_of = np.asarray(ids)
    with open_index(db) as (store, _):
        report = store.build_index(kind, text_queries=texts[:300])
        assert report.text_recall_at_10 is not None and report.text_search_effort is not None
        assert report.text_recall_95ci[0] <= report.text_recall_at_10 <= report.text_recall_95ci[1]
        assert report.recall_at_10 >= 0.93 and report.text_recall_at_10 >= 0.93  # held out: near the 0.95 tuned
        assert report.text_search_effort >= report.search_effort
        if kind == "ivfrabitq":
            assert report.text_rerank >= 100 and report.rerank >= 100
        index = store._index
        assert index is not None and index.efforts is not None
        image_effort, text_effort = index.efforts.of("image"), index.efforts.of("text")
        assert index.efforts.of("both") == Effort(max(image_effort.probes, text_effort.probes),
                                                  max(image_effort.rerank, text_effort.rerank))
        unseen = texts[300:]  # neither tuned nor measured on: what a user's text query meets
        truth = id_of[exact(vectors, unseen)]
        as_text = [[i for i, _ in hits] for hits in store.search(unseen, 10, kind="text")]
        as_image = [[i for i, _ in hits] for hits in store.search(unseen, 10, kind="image")]
        text_recall = recall_per_query(np.asarray(as_text), truth).mean()
        image_recall = recall_per_query(np.asarray(as_image), truth).mean()
        assert text_recall >= 0.9
        if text_effort != image_effort:  # the image effort loses part of a text query's top ten
            assert text_recall > image_recall
    with open_index(db, read_only=True) as (store, _):  # the file keeps both efforts
        assert store._index is not None and store._index.efforts == index.efforts


def test_the_efforts_survive_the_file_and_an_old_file_has_none(tmp_path: Path):
    vectors, _ = data(3000, 2)
    index = VectorIndex.create(DIM)
    index.add(np.arange(len(vectors)), vectors)
    index.save(tmp_path / "flat.faiss", "db")
    assert VectorIndex.load(tmp_path / "flat.faiss")[0].efforts is None  # and searches at FAISS's own effort
    assert Efforts.from_json(Efforts(Effort(3), Effort(9, 200)).to_json()) == Efforts(Effort(3), Effort(9, 200))
    assert Efforts(Effort(3)).of("text") == Effort(3)  # not tuned for text: the image effort
    with pytest.raises(ValueError, match="image"):
        Efforts.from_json({"text": {"probes": 2}})
