"""Hybrid ranking: reciprocal rank fusion of the report ranking and the image-similarity ranking.

score(image) = w_report / (k + report rank) + w_image / (k + image rank), each term only where the
image is among the first `window` entries of that ranking (Cormack, Clarke and Buettcher, SIGIR 2009,
k = 60; a window as Elasticsearch's and OpenSearch's `rank_window_size`). Both rankings are of the
images the filters allow (and `exclude` leaves in), so a filter never lets an image outside it shift
another's rank. Ties go to the smaller image id. Images in neither window follow, in image-similarity
order, so that every allowed image has one place and pages are stable: the order does not depend on
the page asked for, only on the query, the filters and these parameters. `fuse` computes it from the
two windows exactly; tests compare it with the same definition computed over whole brute-force
rankings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search_api.services.query import Fusion


@dataclass(frozen=True)
class Fused:
    image_id: int
    score: float  # the fused score (0 beyond both windows)
    report_rank: int | None  # 1 = best; None outside the report window (or not matched)
    image_rank: int | None  # None outside the image window


def fuse(reports: Sequence[int], images: Sequence[int], fusion: Fusion) -> list[Fused]:
    """The fused order of the images in either window (each list: ids best first, at most `window`
    of them are used)."""
    report_rank = {int(i): r for r, i in enumerate(reports[:fusion.window], start=1)}
    image_rank = {int(i): r for r, i in enumerate(images[:fusion.window], start=1)}
    fused = []
    for image_id in report_rank.keys() | image_rank.keys():
        r, i = report_rank.get(image_id), image_rank.get(image_id)
        score = (fusion.report_weight / (fusion.k + r) if r is not None else 0.0) + (
            fusion.image_weight / (fusion.k + i) if i is not None else 0.0)
        fused.append(Fused(image_id, score, r, i))
    fused.sort(key=lambda f: (-f.score, f.image_id))
    return fused
