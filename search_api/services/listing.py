"""A page of every allowed image in an order other than relevance (or without a query), part of the search
service (search_api/services/search.py): the probe's probability, a metadata column, or index order."""

from __future__ import annotations

import numpy as np

from search_api.services.probing import ordered
from search_api.services.query import Candidates, Hit, Prepared, SearchOptions, new_group, probability_of
from storage.records import StoredImage
from storage.sql.repository import Repository
from storage.store import Store


def ordered_page(store: Store, repository: Repository, dim: int, prepared: Prepared,
                 options: SearchOptions) -> list[Hit]:
    """Every allowed image in the order asked (without a query and an order: the probe's probability,
    else index order); with a query, its cosine is each hit's score and min_score still applies."""
    vector = prepared.vector
    candidates = prepared.candidates or Candidates(
        np.setdiff1d(repository.image_ids(), np.asarray(options.exclude, dtype=np.int64)), None)
    if vector is not None and options.min_score is not None:
        keep = np.isin(candidates.ids, store.ids_scoring(vector, options.min_score, candidates.ids,
                                                              prepared.kind))
        candidates = Candidates(candidates.ids[keep], None if candidates.probability is None
                                else candidates.probability[keep])
    order = options.order if options.order != "relevance" else (
        "probability" if candidates.probability is not None else "relevance")  # relevance: index order
    ids = ordered(repository, candidates, options.filters, order)
    need, start, groups = options.offset + options.k, 0, set[str]()
    kept: list[StoredImage] = []
    while len(kept) < need and start < len(ids):
        chunk = ids[start:start + max(2 * need, 64)]
        start += len(chunk)
        images = repository.get_images(chunk.tolist())
        for image_id in chunk.tolist():
            image = images.get(image_id)
            if image is not None and image.sources and new_group(image, options.group_by, groups):
                kept.append(image)
    page = kept[options.offset:need]
    scores: dict[int, float] = {}
    if vector is not None and page:
        found, vectors = repository.get_embeddings([image.id for image in page], dim)
        scores = dict(zip(found.tolist(), (vectors @ vector[0]).tolist(), strict=True))
    return [Hit(rank=options.offset + i + 1, score=scores.get(image.id), probability=None, image=image,
                probe_probability=probability_of(candidates, image.id)) for i, image in enumerate(page)]
