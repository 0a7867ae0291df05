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

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, wait
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from search_api.services.query import Fusion

ReportWindow = TypeVar("ReportWindow")
ImageWindow = TypeVar("ImageWindow")


BESIDE_MS = 1.0  # an image window slower than this is read beside the report window (below, handing it
# to another thread and sharing the GIL with it cost more than it saves: 100k vectors, 0.1 ms image
# windows, PostgreSQL: 4.9 ms one after the other, 5.8 beside; 1M, 1.2 ms: 4.2 against 3.1)


class Windows:
    """Reads the two windows of a hybrid query: where the image window is slow enough (as timed over
    the last queries), on `pool` while this thread reads the report window. FAISS and the database
    drivers let go of the GIL while they work, so the query then costs about the slower of the two
    instead of their sum (bench/report_bench.py measures both ways)."""

    def __init__(self, pool: Executor, beside_ms: float = BESIDE_MS) -> None:
        self.pool, self.beside_ms = pool, beside_ms
        self.image_ms: float | None = None  # a moving average of the image windows' CPU time

    def read(self, reports: Callable[[], ReportWindow], images: Callable[[], ImageWindow]
             ) -> tuple[ReportWindow, ImageWindow]:
        if self.image_ms is None or self.image_ms <= self.beside_ms:
            first = reports()
            return first, self._timed(images)
        future = self.pool.submit(self._timed, images)
        try:
            first = reports()
        except BaseException:
            wait([future])  # nothing of this query runs on after it has failed
            raise
        return first, future.result()

    def _timed(self, images: Callable[[], ImageWindow]) -> ImageWindow:
        started = time.thread_time()  # its own work: not the GIL waited for beside the report window
        window = images()
        took = (time.thread_time() - started) * 1000
        self.image_ms = took if self.image_ms is None else 0.8 * self.image_ms + 0.2 * took
        return window


class Fused(NamedTuple):
    image_id: int
    score: float  # the fused score (0 beyond both windows)
    report_rank: int | None  # 1 = best; None outside the report window (or not matched)
    image_rank: int | None  # None outside the image window


@dataclass(frozen=True)
class FusedOrder:
    """The images of either window in fused order, as arrays (a window of 1,000 is up to 2,000 images a
    query: made and sorted by NumPy)."""

    ids: np.ndarray
    scores: np.ndarray
    report_ranks: np.ndarray  # 0: outside the report window
    image_ranks: np.ndarray

    def image_ids(self) -> Iterator[int]:
        return iter(self.ids.tolist())

    def first(self, n: int) -> list[Fused]:
        return [self._at(p) for p in range(min(n, len(self.ids)))]

    def get(self, image_id: int) -> Fused | None:
        found = np.flatnonzero(self.ids == image_id)
        return self._at(int(found[0])) if len(found) else None

    def _at(self, p: int) -> Fused:
        r, i = int(self.report_ranks[p]), int(self.image_ranks[p])
        return Fused(int(self.ids[p]), float(self.scores[p]), r or None, i or None)


def fuse(reports: Sequence[int], images: Sequence[int], fusion: Fusion) -> FusedOrder:
    """The fused order of the images in either window (each list: ids best first, at most `window`
    of them are used)."""
    by_report = np.asarray(reports[:fusion.window], dtype=np.int64)
    by_image = np.asarray(images[:fusion.window], dtype=np.int64)
    ids = np.union1d(by_report, by_image)
    report_ranks, image_ranks = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=np.int64)
    report_ranks[np.searchsorted(ids, by_report)] = np.arange(1, len(by_report) + 1)
    image_ranks[np.searchsorted(ids, by_image)] = np.arange(1, len(by_image) + 1)
    scores = np.zeros(len(ids))  # the report's term first, then the image's, as one sum in that order
    scores[report_ranks > 0] = fusion.report_weight / (fusion.k + report_ranks[report_ranks > 0].astype(np.float64))
    scores[image_ranks > 0] += fusion.image_weight / (fusion.k + image_ranks[image_ranks > 0].astype(np.float64))
    order = np.lexsort((ids, -scores))  # best first, ties to the smaller id
    return FusedOrder(ids[order], scores[order], report_ranks[order], image_ranks[order])
