"""How many results a search has to page through (images, or studies/patients when grouped) and the facet
counts of its matching images, part of the search service (search_api/services/search.py). Past
`count_limit` matching images, groups and facets are counted over the first count_limit (marked so)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search_api.services.query import Matches, Prepared, SearchOptions
from storage.sql.repository import Repository
from storage.store import Store


def count_matches(store: Store, repository: Repository, count_limit: int, options: SearchOptions,
                  facets: Sequence[str], prepared: Prepared) -> Matches:
    """How many results there are to page through (images, or studies/patients when grouped) and the
    facet counts of the matching images: every image the filters allow, or with a cutoff those the
    search finds scoring at least it."""
    candidates = prepared.candidates
    among = candidates.ids if candidates is not None and options.probe is not None else None
    if prepared.report is not None:  # the candidates are already min_score's
        among = prepared.report_ids if options.mode == "report" else candidates.ids if candidates else None
    elif options.min_score is not None and prepared.vector is not None:
        among = store.ids_scoring(prepared.vector, options.min_score,
                                       None if candidates is None else candidates.ids, prepared.kind)
        if options.exclude:
            among = np.setdiff1d(among, np.asarray(options.exclude, dtype=np.int64))
    counted = among if among is not None else candidates.ids if candidates is not None else None
    listed = True  # the images are counted exactly (else: counting stopped after count_limit)
    if counted is not None:
        images = len(counted)
    elif options.filters.empty:
        images = max(0, store.ntotal - len(set(options.exclude)))
    elif prepared.checked is not None:  # a broad filter: counted over the first count_limit images by id
        images, listed = repository.count_matching_within(options.filters, options.exclude,
                                                               count_limit)
    else:
        images = repository.count_matching(options.filters, options.exclude)
    capped = not listed or images > count_limit  # groups and facets of the first count_limit images
    limit = count_limit if capped else None
    total = images if not options.group_by else repository.count_groups(
        options.filters, options.group_by, options.exclude, counted, limit)
    counts = repository.facets(options.filters, facets, options.exclude, counted, limit) if facets else None
    return Matches(total, counts, total_at_least=not listed or (capped and bool(options.group_by)),
                   facets_counted=count_limit if capped and facets else None)
