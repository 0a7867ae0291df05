"""Probes in the API: load a stored probe for the model in use (refusing one of another model),
score images with it, and the candidate sets of searches that a probe filters or that are ordered by
something other than similarity (a probe's probability, the study date). Exact: every candidate image is
scored, none is missed because an approximate index did not reach it."""

from __future__ import annotations

import logging

import numpy as np

from search_api.errors import FieldError
from search_api.services.query import Candidates, Order, ProbeCondition
from storage.probe_cache import ProbeScores
from storage.records import ImageFilter
from storage.sql.probes import Probe, ProbeModelError
from storage.sql.repository import Repository

logger = logging.getLogger(__name__)


def load_probe(repository: Repository, fingerprint_key: str | None, name: str,
               loc: tuple[str | int, ...] = ("body", "probe")) -> Probe:
    """The stored probe `name` for the model in use. Raises FieldError: 404 unknown, 409 another model."""
    probe = repository.get_probe(name)
    if probe is None:
        known = ", ".join(p.name for p in repository.list_probes()) or "none; medsearch-index train-probe makes one"
        raise FieldError(404, loc, f"no probe named {name!r} (probes: {known})", "unknown_probe")
    try:
        probe.require_model(fingerprint_key or "")
    except ProbeModelError as exc:
        raise FieldError(409, loc, str(exc), "probe_of_another_model") from None
    return probe


def check_label(probe: Probe, label: str, loc: tuple[str | int, ...]) -> None:
    if label not in probe.labels:
        raise FieldError(422, loc, f"probe {probe.name!r} has no label {label!r} (its labels: "
                         f"{', '.join(probe.labels)})", "unknown_label")


def probe_candidates(scores_of: ProbeScores, probe: Probe, condition: ProbeCondition, allowed: np.ndarray | None
                     ) -> Candidates:
    if allowed is None:  # every image the probe calls positive: kept while the scores stay the same
        return Candidates(*scores_of.positives(probe, condition.label, condition.min_probability))
    ids, scores = scores_of.scores(probe, condition.label, allowed)
    keep = scores >= condition.min_probability
    return Candidates(ids[keep], scores[keep])


def ordered(repository: Repository, candidates: Candidates, where: ImageFilter, order: Order) -> np.ndarray:
    """The candidate ids in the requested order: by probability (highest first), or by study date
    (unknown dates last); ties by id, so that pages are stable."""
    ids = candidates.ids
    if order == "probability":
        if candidates.probability is None:
            raise FieldError(422, ("body", "order"), "order 'probability' needs filters.probe", "order_needs_probe")
        return ids[np.lexsort((ids, -candidates.probability))]
    if order in ("newest", "oldest"):
        dated, days = repository.study_dates(where)
        day = np.full(len(ids), -1, dtype=np.int64)
        where_found = np.searchsorted(dated, ids)
        inside = (where_found < len(dated)) & (dated[np.minimum(where_found, len(dated) - 1)] == ids)
        day[inside] = days[where_found[inside]]
        unknown = day < 0
        key = -day if order == "newest" else day
        return ids[np.lexsort((ids, key, unknown))]
    return ids


