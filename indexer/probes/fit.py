"""The mathematics of a probe, on plain arrays (no storage, no model): per label, a regularised logistic
regression on the embeddings with the zero-shot logit as a prior, patient-grouped cross-validation,
Platt calibration on out-of-fold logits, and the collapse into one linear map.

Per label j, with x a unit embedding and z0(x) = scale * cos(x, text_j) + bias SigLIP's zero-shot logit:

    logit(x) = a * z0(x) + v . x + b,    minimising  balanced log loss + lam/2 |v|^2 + EPS/2 (a^2 + b^2)

With few labelled cases a large lam keeps v near 0: the probe is the zero-shot classifier re-scaled
(a, b); with many, v learns what the prompt does not say. lam is chosen by patient-grouped
cross-validation (mean out-of-fold AUC; ties go to the larger lam, the one nearer the prior). Without a
prior (no prompts), z0 = 0. The calibrated probability is sigmoid(alpha * logit + c), (alpha, c) fitted
on the out-of-fold logits (Platt); all of it is x . w + w0 for one w and one w0 per label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from indexer.errors import IndexerError
from indexer.metrics import bootstrap_auc_ci, roc_auc

logger = logging.getLogger(__name__)
LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)
EPS = 1e-3
MAX_FOLDS = 5
BINS = 10


@dataclass(frozen=True)
class Prior:
    texts: np.ndarray  # labels x dim, unit rows
    scale: float
    bias: float

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return (self.scale * (vectors @ self.texts.T) + self.bias).astype(np.float64)


@dataclass(frozen=True)
class Fit:
    v: np.ndarray
    a: float
    b: float

    def logits(self, vectors: np.ndarray, prior_logit: np.ndarray) -> np.ndarray:
        return self.a * prior_logit + vectors @ self.v + self.b


def fit_logistic(x: np.ndarray, y: np.ndarray, prior_logit: np.ndarray, lam: float) -> Fit:
    """The penalised, class-balanced logistic fit of one label (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    y = y.astype(np.float64)
    positives = max(y.sum(), 1.0)
    negatives = max(len(y) - y.sum(), 1.0)
    weight = np.where(y > 0, len(y) / (2 * positives), len(y) / (2 * negatives)) / len(y)
    dim = x.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        v, a, b = theta[:dim], theta[dim], theta[dim + 1]
        z = a * prior_logit + x @ v + b
        value = float(np.sum(weight * (np.logaddexp(0.0, z) - y * z)))
        residual = weight * (1.0 / (1.0 + np.exp(-z)) - y)
        grad = np.concatenate([x.T @ residual + lam * v / len(y),
                               [residual @ prior_logit + EPS * a, residual.sum() + EPS * b]])
        value += 0.5 * lam * float(v @ v) / len(y) + 0.5 * EPS * (a * a + b * b)
        return value, grad

    start = np.zeros(dim + 2)
    start[dim] = 1.0 if np.any(prior_logit) else 0.0
    result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = result.x
    return Fit(theta[:dim], float(theta[dim]), float(theta[dim + 1]))


def platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(alpha, c) of sigmoid(alpha * logit + c) fitted to the labels, unweighted (the true prevalence).
    Fitted on standardised logits with a slight ridge, which keeps it finite when they separate the
    classes without shrinking the slope of a strongly regularised (narrow) probe."""
    logits = np.asarray(logits, dtype=np.float64)
    centre, spread = float(logits.mean()), float(logits.std()) or 1.0
    z0 = (logits - centre) / spread
    y = y.astype(np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * z0 + theta[1]
        residual = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        value = float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * EPS * float(theta @ theta)
        return value, np.array([residual @ z0, residual.sum()]) + EPS * theta

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    alpha, c = float(result.x[0]) / spread, float(result.x[1])
    return alpha, c - alpha * centre


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Mean |observed frequency - mean probability| over equal-width probability bins, by bin size."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(float(y[inside].mean()) - float(p[inside].mean()))
    return total / len(p)


def group_keys(patients: list[str | None], ids: np.ndarray) -> np.ndarray:
    """A patient's images share a fold; an image without a patient id is its own group."""
    return np.asarray([p if p is not None else f"image:{i}" for p, i in zip(patients, ids, strict=True)])


def grouped_folds(y: np.ndarray, groups: np.ndarray, label: str, seed: int = 0) -> list[np.ndarray]:
    """Test-fold index arrays, no group in two folds, each with positives and negatives where possible.
    Raises IndexerError naming the label when there are too few patients on either side."""
    from sklearn.model_selection import StratifiedGroupKFold

    positive_groups = len(set(groups[y]))
    negative_groups = len(set(groups[~y]))
    splits = min(MAX_FOLDS, positive_groups, negative_groups)
    if splits < 2:
        raise IndexerError(f"label {label!r}: {int(y.sum())} positive image(s) from {positive_groups} patient(s) "
                           f"and {int((~y).sum())} negative(s) from {negative_groups}: cross-validation by "
                           "patient needs at least 2 patients with the label and 2 without")
    folder = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    return [test for _, test in folder.split(np.zeros(len(y)), y.astype(int), groups)]


def out_of_fold(x: np.ndarray, y: np.ndarray, prior_logit: np.ndarray, folds: list[np.ndarray], lam: float
                ) -> np.ndarray:
    """Each image's logit from the fit on the folds it is not in."""
    result = np.zeros(len(y))
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        fit = fit_logistic(x[train], y[train], prior_logit[train], lam)
        result[test] = fit.logits(x[test], prior_logit[test])
    return result


def cross_fitted_probabilities(logits: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Calibrated out-of-fold probabilities whose Platt map never saw the fold it is applied to: the
    honest check of the calibration."""
    result = np.zeros(len(y))
    for test in folds:
        rest = np.setdiff1d(np.arange(len(y)), test)
        alpha, c = platt(logits[rest], y[rest])
        result[test] = sigmoid(alpha * logits[test] + c)
    return result


@dataclass(frozen=True)
class LabelProbe:
    weights: np.ndarray  # dim
    intercept: float
    metrics: dict[str, object]
    oof_probability: np.ndarray  # cross-fitted calibrated, per training image
    oof_logit: np.ndarray  # the held-out fold's logit of each training image (what the AUC is of)
    folds: list[np.ndarray]
    lam: float


def train_label(x: np.ndarray, y: np.ndarray, groups: np.ndarray, prior: Prior | None, j: int, label: str,
                bootstrap: int = 1000, seed: int = 0) -> LabelProbe:
    """One label's probe, its cross-validated metrics and out-of-fold probabilities."""
    prior_logit = prior.logits(x)[:, j] if prior is not None else np.zeros(len(y))
    folds = grouped_folds(y, groups, label, seed)
    aucs = {}
    oof = {}
    for lam in LAMBDAS:
        oof[lam] = out_of_fold(x, y, prior_logit, folds, lam)
        aucs[lam] = roc_auc(oof[lam], y) or 0.0
    lam = max(LAMBDAS, key=lambda value: (round(aucs[value], 6), value))
    logits = oof[lam]
    calibrated = cross_fitted_probabilities(logits, y, folds)
    alpha, c = platt(logits, y)
    fit = fit_logistic(x, y, prior_logit, lam)
    scale, bias = (prior.scale, prior.bias) if prior is not None else (0.0, 0.0)
    text = prior.texts[j] if prior is not None else np.zeros(x.shape[1])
    weights = alpha * (fit.a * scale * text + fit.v)
    intercept = alpha * (fit.a * bias + fit.b) + c
    auc = roc_auc(logits, y)
    interval = bootstrap_auc_ci(logits, y, rounds=bootstrap) if auc is not None and bootstrap else None
    zero_shot = roc_auc(prior_logit, y) if prior is not None else None
    yf = y.astype(float)
    metrics: dict[str, object] = {
        "positives": int(y.sum()), "negatives": int((~y).sum()), "patients_positive": len(set(groups[y])),
        "folds": len(folds), "lambda": lam, "prior_weight": fit.a,
        "auc": auc, "auc_95ci": list(interval) if interval else None, "zero_shot_auc": zero_shot,
        "accuracy": float(np.mean((calibrated >= 0.5) == y)),
        "brier": float(np.mean((calibrated - yf) ** 2)),
        "ece_uncalibrated": float(expected_calibration_error(sigmoid(logits), yf)),
        "ece": float(expected_calibration_error(calibrated, yf)),
    }
    logger.info("probe label %s: lambda %s, out-of-fold AUC %s", label, lam, auc)
    return LabelProbe(weights.astype(np.float32), float(intercept), metrics, calibrated, logits, folds, lam)
