"""Retrieval and classification metrics, computed here (no scikit-learn needed) and tested against
hand-computed values and against scikit-learn where it is installed."""

from __future__ import annotations

import numpy as np


def precision_at_k(relevant_ranked: np.ndarray, k: int) -> float:
    """Fraction of the first k results that are relevant (relevant_ranked: booleans in rank order)."""
    top = np.asarray(relevant_ranked[:k], dtype=bool)
    return float(top.sum() / k) if k > 0 else 0.0


def recall_at_k(relevant_ranked: np.ndarray, k: int) -> float | None:
    """Fraction of all relevant items found in the first k; None when nothing is relevant."""
    relevant = np.asarray(relevant_ranked, dtype=bool)
    total = int(relevant.sum())
    return float(relevant[:k].sum() / total) if total else None


def average_precision(relevant_ranked: np.ndarray) -> float | None:
    """Mean of precision@rank over the ranks of the relevant items; None when nothing is relevant."""
    relevant = np.asarray(relevant_ranked, dtype=bool)
    if not relevant.any():
        return None
    hits = np.cumsum(relevant)
    ranks = np.arange(1, len(relevant) + 1)
    return float(np.mean(hits[relevant] / ranks[relevant]))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count one half). None for a single class."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.unique(scores)[::-1]
    tpr = [0.0] + [float((positive & (scores >= t)).sum() / max(1, positive.sum())) for t in thresholds]
    fpr = [0.0] + [float((~positive & (scores >= t)).sum() / max(1, (~positive).sum())) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def bootstrap_auc_ci(scores: np.ndarray, positive: np.ndarray, rounds: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the ROC AUC (resamples drawing a single class are
    redrawn); None when the AUC itself is undefined."""
    if roc_auc(scores, positive) is None:
        return None
    rng = np.random.default_rng(seed)
    scores, positive = np.asarray(scores), np.asarray(positive, dtype=bool)
    values: list[float] = []
    while len(values) < rounds:
        pick = rng.integers(0, len(scores), len(scores))
        value = roc_auc(scores[pick], positive[pick])
        if value is not None:
            values.append(value)
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)


def paired_bootstrap_auc(a: np.ndarray, b: np.ndarray, positive: np.ndarray, groups: np.ndarray | None = None,
                         rounds: int = 1000, seed: int = 0, level: float = 0.95
                         ) -> dict[str, tuple[float, float]] | None:
    """Percentile bootstrap intervals of AUC(a), AUC(b) and AUC(b) - AUC(a) on the same resamples.
    With `groups` (patients), whole groups are resampled: a patient's images are not independent.
    None when an AUC is undefined."""
    positive = np.asarray(positive, dtype=bool)
    if roc_auc(a, positive) is None or roc_auc(b, positive) is None or rounds <= 0:
        return None
    rng = np.random.default_rng(seed)
    keys = np.asarray(groups) if groups is not None else np.arange(len(positive)).astype(str)
    unique, inverse = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    values: list[tuple[float, float]] = []
    attempts = 0
    while len(values) < rounds and attempts < rounds * 20:
        attempts += 1
        pick = np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
        first, second = roc_auc(a[pick], positive[pick]), roc_auc(b[pick], positive[pick])
        if first is not None and second is not None:
            values.append((first, second))
    if not values:
        return None
    table = np.asarray(values)
    bounds = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(column: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(column, bounds)
        return float(low), float(high)

    return {"a": interval(table[:, 0]), "b": interval(table[:, 1]), "b_minus_a": interval(table[:, 1] - table[:, 0])}
