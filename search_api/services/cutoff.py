"""A search's cosine cutoff (`min_score`) as a condition on its candidates, part of the search service
(search_api/services/search.py): the candidates whose cosine reaches it, decided by the cosine shown."""

from __future__ import annotations

import numpy as np

from search_api.services.query import Candidates, Prepared, SearchOptions
from search_api.services.reports import cosines
from storage.sql.repository import Repository
from storage.store import Store

NEAR = 1e-5  # a cosine computed by FAISS and by NumPy differ by less than this (float32 sums of 1152 terms)


def scoring(store: Store, repository: Repository, prepared: Prepared, options: SearchOptions) -> Candidates:
    """The candidates whose cosine reaches min_score (exact where the search is)."""
    assert prepared.vector is not None and options.min_score is not None
    candidates = prepared.candidates
    allowed = None if candidates is None else candidates.ids
    # the results show NumPy's cosine (report_search.cosines), FAISS sums in another order: the ids
    # within NEAR of the cutoff are decided by the cosine shown, so min_score = a shown score keeps it
    sure = store.ids_scoring(prepared.vector, options.min_score + NEAR, allowed, prepared.kind)
    band = np.setdiff1d(store.ids_scoring(prepared.vector, options.min_score - NEAR, allowed, prepared.kind),
                        sure)
    shown = cosines(repository, prepared.vector, band.tolist(), store.dim or 0)
    scoring = np.union1d(sure, np.asarray([i for i, c in shown.items() if c >= options.min_score], dtype=np.int64))
    scoring = np.setdiff1d(scoring, np.asarray(options.exclude, dtype=np.int64)) if options.exclude else scoring
    if candidates is None:
        return Candidates(scoring, None)
    keep = np.isin(candidates.ids, scoring)
    probability = None if candidates.probability is None else candidates.probability[keep]
    return Candidates(candidates.ids[keep], probability)
