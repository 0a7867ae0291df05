"""Metrics against hand-computed values (ties, a label with no positives, a single class) and
scikit-learn where it is installed."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.metrics import (
    average_precision,
    bootstrap_auc_ci,
    precision_at_k,
    recall_at_k,
    roc_auc,
    roc_curve,
)


def test_precision_recall_and_ap_by_hand():
    ranked = np.array([1, 0, 1, 0, 0, 1], dtype=bool)  # relevant at ranks 1, 3, 6
    assert precision_at_k(ranked, 1) == 1.0 and precision_at_k(ranked, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, 3) == pytest.approx(2 / 3) and recall_at_k(ranked, 6) == 1.0
    assert average_precision(ranked) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    nothing = np.zeros(4, dtype=bool)
    assert recall_at_k(nothing, 2) is None and average_precision(nothing) is None


def test_auc_by_hand_with_ties_and_single_class():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None  # single class
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None  # no positives
    assert bootstrap_auc_ci(np.array([0.1, 0.2]), np.array([0, 0])) is None
    fpr, tpr = roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(0.75)  # the trapezoid area


def test_bootstrap_interval_contains_the_estimate():
    rng = np.random.default_rng(4)
    positive = rng.integers(0, 2, 200).astype(bool)
    scores = positive * 0.5 + rng.normal(size=200)
    low, high = bootstrap_auc_ci(scores, positive, rounds=300)
    assert low < roc_auc(scores, positive) < high and high - low < 0.3


def test_against_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")
    rng = np.random.default_rng(0)
    for _ in range(20):
        positive = rng.integers(0, 2, 50).astype(bool)
        scores = np.round(rng.normal(size=50) + positive, 1)  # rounded: many ties
        if positive.all() or not positive.any():
            continue
        assert roc_auc(scores, positive) == pytest.approx(metrics.roc_auc_score(positive, scores))
        order = np.argsort(-scores, kind="stable")
        assert average_precision(positive[order]) == pytest.approx(
            metrics.average_precision_score(positive, -np.arange(50)[np.argsort(order)]))
