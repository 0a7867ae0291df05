"""Probes, stored: few-shot classifiers on the index's embeddings (trained by indexer/probes/train.py). A probe
is a label set and, per label, a calibrated linear classifier collapsed into one weight vector and one
intercept, so that scoring every stored vector is one matrix product. It belongs to the model whose
embeddings it was trained on (`fingerprint_key`): callers refuse it under another (ProbeModelError).

`Probe` is the typed record; `ProbesMixin` is part of storage.sql.repository.Repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import StorageError
from storage.sql.db import database_errors
from storage.sql.models import ProbeRow

CHUNK = 20_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ProbeExistsError(StorageError):
    """A probe of that name is stored already (train again with --replace)."""


class ProbeModelError(StorageError):
    """A probe trained on the embeddings of another model than the one in use."""


@dataclass(frozen=True)
class Probe:
    name: str
    fingerprint_key: str  # the model whose embeddings it was trained on
    training_fingerprint: str  # sha256 of the labelled set (image ids, labels, their vectors)
    created_at: datetime
    labels: list[str]
    weights: np.ndarray  # labels x dim float32: calibrated logit = weights @ vector + intercepts
    intercepts: np.ndarray  # labels
    metrics: dict[str, Any] = field(default_factory=dict)  # cross-validated by patient, per label
    details: dict[str, Any] = field(default_factory=dict)  # prompts, prior, folds, counts

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """images x labels calibrated logits."""
        return np.asarray(vectors, dtype=np.float32) @ self.weights.T + self.intercepts

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """images x labels calibrated probabilities, each label on its own (one-vs-rest)."""
        return 1.0 / (1.0 + np.exp(-np.clip(self.logits(vectors), -60, 60)))

    def require_model(self, fingerprint_key: str) -> None:
        if fingerprint_key != self.fingerprint_key:
            raise ProbeModelError(f"probe {self.name!r} was trained on the embeddings of another model "
                                  f"(fingerprint {self.fingerprint_key[:12]}, this index uses "
                                  f"{fingerprint_key[:12]}): train it again on this index")

    def label_index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise StorageError(f"probe {self.name!r} has no label {label!r} "
                               f"(its labels: {', '.join(self.labels)})") from None


def _record(row: ProbeRow) -> Probe:
    weights = np.frombuffer(row.weights, dtype=np.float32).reshape(len(row.labels), row.dim).copy()
    return Probe(row.name, row.fingerprint_key, row.training_fingerprint, row.created_at, list(row.labels),
                 weights, np.asarray(row.intercepts, dtype=np.float32), dict(row.metrics), dict(row.details))


class ProbesMixin:
    engine: Engine
    _sessions: sessionmaker[Session]

    def save_probe(self, probe: Probe, *, replace: bool = False) -> None:
        """Store a probe. Raises ProbeExistsError when the name is taken and `replace` is false."""
        weights = np.ascontiguousarray(probe.weights, dtype=np.float32)
        with database_errors(self.engine), self._sessions.begin() as session:
            existing = session.scalar(select(ProbeRow).where(ProbeRow.name == probe.name))
            if existing is not None and not replace:
                raise ProbeExistsError(f"a probe named {probe.name!r} exists already (created "
                                       f"{existing.created_at:%Y-%m-%d %H:%M}); use --replace to train it again")
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(ProbeRow(name=probe.name, fingerprint_key=probe.fingerprint_key,
                                 training_fingerprint=probe.training_fingerprint, created_at=probe.created_at,
                                 labels=list(probe.labels), dim=int(weights.shape[1]), weights=weights.tobytes(),
                                 intercepts=[float(x) for x in probe.intercepts], metrics=probe.metrics,
                                 details=probe.details))

    def get_probe(self, name: str) -> Probe | None:
        with database_errors(self.engine), self._sessions() as session:
            row = session.scalar(select(ProbeRow).where(ProbeRow.name == name))
            return _record(row) if row is not None else None

    def list_probes(self) -> list[Probe]:
        with database_errors(self.engine), self._sessions() as session:
            return [_record(row) for row in session.scalars(select(ProbeRow).order_by(ProbeRow.name))]

    def remove_probe(self, name: str) -> bool:
        with database_errors(self.engine), self._sessions.begin() as session:
            return session.execute(delete(ProbeRow).where(ProbeRow.name == name)).rowcount > 0  # type: ignore[attr-defined]
