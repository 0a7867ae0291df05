"""`medsearch-index train-probe`: a few-shot classifier per label on the stored embeddings (no
re-encoding), cross-validated by patient, calibrated on held-out folds, stored in the index database
(storage/sql/probes.py) with the fingerprints of its model and of its training set. The fitting is in
indexer/probes/fit.py; `learning_curve` serves `eval`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.model.encoder import Encoder
from indexer.errors import IndexerError
from indexer.labels import Labelled, match, text_vectors
from indexer.metrics import roc_auc
from indexer.probes.fit import Prior, fit_logistic, group_keys, grouped_folds, train_label
from storage.sql.meta import utcnow
from storage.sql.probes import Probe
from storage.sql.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)
CURVE_REPEATS = 3


@dataclass(frozen=True)
class TrainingSet:
    ids: np.ndarray
    vectors: np.ndarray
    labels: list[str]
    targets: np.ndarray  # images x labels booleans
    groups: np.ndarray
    patients: int
    fingerprint: str


def training_set(store: Store, repository: Repository, encoder: Encoder, rows: list[tuple[str, str, list[str]]],
                 only: list[str] | None = None) -> TrainingSet:
    """The labelled images of the index and their stored vectors. Raises IndexerError when the model
    is not the index's or too little is labelled."""
    manifest = store.manifest
    if manifest is None or manifest.fingerprint_key != encoder.fingerprint.key:
        raise IndexerError("the model loaded is not the one this index was built with: use --model "
                           f"{manifest.model_name if manifest else '?'}")
    data: Labelled = match(repository, rows)
    if len(data.image_ids) < 4:
        raise IndexerError(f"only {len(data.image_ids)} labelled image(s) found in the index ({data.unmatched} rows "
                           "matched nothing): a probe needs at least 2 patients with each label and 2 without")
    ids, vectors = repository.get_embeddings(data.image_ids.tolist(), encoder.dim)
    keep = np.isin(data.image_ids, ids)
    labels = sorted(set().union(*data.labels)) if only is None else only
    targets = np.array([[label in data.labels[i] for label in labels] for i in np.flatnonzero(keep)], dtype=bool)
    patients = [data.patients[i] for i in np.flatnonzero(keep)]
    digest = hashlib.sha256()
    for image_id, row, vector in zip(ids, targets, vectors, strict=True):
        digest.update(f"{int(image_id)}:{','.join(np.asarray(labels)[row])};".encode())
        digest.update(vector.tobytes())
    return TrainingSet(ids, vectors, labels, targets, group_keys(patients, ids),
                       len({p for p in patients if p is not None}), digest.hexdigest())


def prior_of(encoder: Encoder, labels: list[str], prompts: dict[str, list[str]] | None) -> Prior:
    scale = getattr(encoder, "logit_scale", None) or 1.0
    bias = getattr(encoder, "logit_bias", None) or 0.0
    return Prior(text_vectors(encoder, labels, prompts), float(scale), float(bias))


def train_probe(data: TrainingSet, name: str, fingerprint_key: str, prior: Prior | None,
                prompts: dict[str, list[str]] | None = None, bootstrap: int = 1000,
                progress: Callable[[str], object] | None = None) -> Probe:
    """One calibrated classifier per label, its metrics cross-validated by patient."""
    problems = []
    for j, label in enumerate(data.labels):  # every label that cannot be validated, in one message
        try:
            grouped_folds(data.targets[:, j], data.groups, label)
        except IndexerError as exc:
            problems.append(str(exc))
    if problems:
        raise IndexerError("; ".join(problems) + ". Label cases of more patients, or leave these labels out of the "
                           "file: nothing was stored")
    weights, intercepts, per_label = [], [], {}
    for j, label in enumerate(data.labels):
        fitted = train_label(data.vectors, data.targets[:, j], data.groups, prior, j, label, bootstrap)
        if progress:
            progress(label)
        weights.append(fitted.weights)
        intercepts.append(fitted.intercept)
        per_label[label] = fitted.metrics
    defined = [float(m["auc"]) for m in per_label.values() if isinstance(m["auc"], float)]
    metrics: dict[str, Any] = {"labels": per_label, "mean_auc": float(np.mean(defined)) if defined else None,
                               "validation": "out-of-fold, folds grouped by patient; calibration cross-fitted"}
    details = {"images": len(data.ids), "patients": data.patients, "prior": prior is not None,
               "prompts": {label: (prompts or {}).get(label, [label]) for label in data.labels} if prior else None}
    return Probe(name, fingerprint_key, data.fingerprint, utcnow(), list(data.labels), np.stack(weights),
                 np.asarray(intercepts, dtype=np.float32), metrics, details)


def learning_curve(data: TrainingSet, prior: Prior | None, j: int, lam: float, seed: int = 0
                   ) -> list[dict[str, Any]]:
    """Held-out AUC of the probe trained on n positive and n negative cases of label j (n = 1, 2, 4, ...,
    all the training folds hold), against zero-shot on the same held-out patients: mean over the
    patient-grouped folds and CURVE_REPEATS draws."""
    y = data.targets[:, j]
    folds = grouped_folds(y, data.groups, data.labels[j], seed)
    prior_logit = prior.logits(data.vectors)[:, j] if prior is not None else np.zeros(len(y))
    rng = np.random.default_rng(seed)
    trains = [np.setdiff1d(np.arange(len(y)), test) for test in folds]
    most = min(min(int(y[t].sum()), int((~y[t]).sum())) for t in trains)  # "all": what every fold can give
    sizes = sorted({*(2 ** k for k in range(int(np.log2(max(most, 1))) + 1)), most})
    points = []
    for n in sizes:
        probe_aucs, zero_aucs = [], []
        for test in folds:
            train = np.setdiff1d(np.arange(len(y)), test)
            pos, neg = train[y[train]], train[~y[train]]
            if len(pos) < n or len(neg) < n or roc_auc(prior_logit[test], y[test]) is None:
                continue
            for _ in range(CURVE_REPEATS if n < min(len(pos), len(neg)) else 1):
                chosen = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
                fit = fit_logistic(data.vectors[chosen], y[chosen], prior_logit[chosen], lam)
                probe_aucs.append(roc_auc(fit.logits(data.vectors[test], prior_logit[test]), y[test]))
                zero_aucs.append(roc_auc(prior_logit[test], y[test]) if prior is not None else None)
        if probe_aucs:
            points.append({"per_label": n, "probe_auc": float(np.mean([a for a in probe_aucs if a is not None])),
                           "zero_shot_auc": float(np.mean([a for a in zero_aucs if a is not None]))
                           if prior is not None else None,
                           "fits": len(probe_aucs)})
    return points
