"""Is a relevance map faithful? Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

Deletion masks the map's most relevant patches first: the score should fall faster than when the same
number of random patches is masked (a lower area under the curve). Insertion starts from the fully
masked image and restores the most relevant patches first: the score should rise faster (a higher
area). Masked patches take the processor's mean colour, as in the occlusion map (core.maps.explain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.maps.explain import Explainer


@dataclass(frozen=True)
class Curves:
    """One image/query pair: areas under the score curves (fraction of patches 0..1 on x, cosine on y)."""

    deletion: float
    insertion: float
    random_deletion: float
    random_insertion: float
    full: float  # the score of the whole image
    empty: float  # and of the fully masked one

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _area(scores: np.ndarray) -> float:
    """Trapezoid area of scores taken at evenly spaced fractions 0..1."""
    return float(((scores[1:] + scores[:-1]) / 2).mean())


def order_masks(order: np.ndarray, shape: tuple[int, int], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep-masks for deletion and insertion along `order` (cell indices, most relevant first), at
    steps + 1 evenly spaced fractions from 0 to 1."""
    cells = shape[0] * shape[1]
    counts = np.rint(np.linspace(0, cells, steps + 1)).astype(int)
    rank = np.empty(cells, dtype=int)
    rank[order] = np.arange(cells)
    deletion = np.stack([rank >= count for count in counts]).reshape(-1, *shape)
    return deletion, ~deletion


def curves(explainer: Explainer, model_image: np.ndarray, query: np.ndarray, values: np.ndarray, *,
           steps: int = 16, random_orders: int = 2, seed: int = 0, batch: int = 16) -> Curves:
    """The map's deletion and insertion areas beside those of random orders (their mean)."""
    shape = (int(values.shape[0]), int(values.shape[1]))
    rng = np.random.default_rng(seed)
    orders = [np.argsort(-values.ravel(), kind="stable")]
    orders += [rng.permutation(values.size) for _ in range(random_orders)]
    masks = [order_masks(order, shape, steps) for order in orders]
    keep = np.concatenate([m for pair in masks for m in pair])
    scores = explainer.masked_scores(model_image, query, keep, batch=batch).reshape(len(orders), 2, steps + 1)
    areas = np.array([[_area(scores[n, 0]), _area(scores[n, 1])] for n in range(len(orders))])
    return Curves(deletion=float(areas[0, 0]), insertion=float(areas[0, 1]),
                  random_deletion=float(areas[1:, 0].mean()), random_insertion=float(areas[1:, 1].mean()),
                  full=float(scores[0, 0, 0]), empty=float(scores[0, 0, -1]))


@dataclass(frozen=True)
class Summary:
    """Over many pairs: the mean areas, and how much (in cosine x fraction) and how often the map
    beats random masking."""

    pairs: int
    deletion: float
    random_deletion: float
    insertion: float
    random_insertion: float
    deletion_margin: float  # mean (random - map): > 0 when the map's patches matter more
    insertion_margin: float  # mean (map - random)
    deletion_wins: float  # share of pairs where the map's deletion area is below random's
    insertion_wins: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarise(found: list[Curves]) -> Summary:
    if not found:
        raise ValueError("no pairs to summarise")
    deletion = np.array([c.random_deletion - c.deletion for c in found])
    insertion = np.array([c.insertion - c.random_insertion for c in found])
    mean = lambda name: float(np.mean([getattr(c, name) for c in found]))  # noqa: E731
    return Summary(len(found), mean("deletion"), mean("random_deletion"), mean("insertion"), mean("random_insertion"),
                   float(deletion.mean()), float(insertion.mean()),
                   float((deletion > 0).mean()), float((insertion > 0).mean()))


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two maps over their cells."""
    from scipy.stats import spearmanr

    value = spearmanr(np.ravel(first), np.ravel(second)).statistic
    return float(value) if np.isfinite(value) else 0.0
