"""Synthetic embeddings shaped like image embeddings, for bench/search_bench.py.

`clustered`: a power-law spectrum (variance of the i-th of `dim` random orthonormal directions ∝
i^-1.6: the top 64 principal components hold ~80% of the variance, as measured on real image
embeddings), ~300 clusters of Zipf-like sizes (p ∝ rank^-1.1) whose centres are drawn from that
spectrum, each point its centre plus noise in a cluster's own 26-dimensional subspace (local intrinsic
dimension ~26) and a little isotropic noise; L2-normalised. Image queries are fresh draws from the same
mixture (never indexed); text queries sit away from the clusters, as SigLIP's text embeddings do (a
shared offset direction, the "modality gap", plus a weak pull toward one cluster). `gaussian`: the
isotropic worst case. `describe` measures what the data is: the variance share of the top 64
components and the Levina-Bickel maximum-likelihood intrinsic dimension (k = 10) on a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLUSTERS, LOCAL_DIM, ALPHA, ZIPF = 300, 26, 1.6, 1.1
SPREAD, ISO = 0.075, 0.006  # within-cluster spread (its subspace) and isotropic noise


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Mixture:
    basis: np.ndarray  # dim x dim orthonormal
    scales: np.ndarray  # dim: standard deviation of each basis direction (the power law)
    centres: np.ndarray  # clusters x dim
    local: np.ndarray  # clusters x LOCAL_DIM x dim: each cluster's own subspace
    weights: np.ndarray  # clusters: Zipf-like
    gap: np.ndarray  # dim: the text embeddings' shared offset direction

    @classmethod
    def make(cls, dim: int, seed: int) -> Mixture:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        scales = np.arange(1, dim + 1, dtype=np.float64) ** (-ALPHA / 2)
        centres = (rng.standard_normal((CLUSTERS, dim)) * scales) @ basis.T
        centres *= 1.0 / np.sqrt((scales ** 2).sum())
        local = np.stack([np.linalg.qr(rng.standard_normal((dim, LOCAL_DIM)))[0].T for _ in range(CLUSTERS)])
        weights = np.arange(1, CLUSTERS + 1, dtype=np.float64) ** -ZIPF
        gap = unit(rng.standard_normal((1, dim)))[0]
        return cls(basis.astype(np.float32), scales.astype(np.float32), centres.astype(np.float32),
                   local.astype(np.float32), weights / weights.sum(), gap)

    def draw(self, n: int, seed: int, chunk: int = 50_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.centres.shape[1]), dtype=np.float32)
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            which = rng.choice(CLUSTERS, size=size, p=self.weights)
            block = rng.standard_normal((size, self.centres.shape[1]), dtype=np.float32) * ISO
            block += self.centres[which]
            for cluster in np.unique(which):
                rows = np.flatnonzero(which == cluster)
                block[rows] += (rng.standard_normal((len(rows), LOCAL_DIM), dtype=np.float32) * SPREAD) @ (
                    self.local[cluster])
            out[start:start + size] = unit(block)
        return out

    def text_queries(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        which = rng.choice(CLUSTERS, size=n, p=self.weights)
        pull = unit(self.centres[which]) * 0.35
        noise = rng.standard_normal((n, self.centres.shape[1]), dtype=np.float32) * 0.01
        return unit(self.gap[None, :] + pull + noise)


def gaussian(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        out[start:start + chunk] = unit(rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32))
    return out


def describe(vectors: np.ndarray, seed: int = 0, sample: int = 5000, k: int = 10) -> dict[str, float]:
    """Top-64 variance share and the Levina-Bickel MLE intrinsic dimension on a sample."""
    rng = np.random.default_rng(seed)
    x = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)].astype(np.float64)
    centred = x - x.mean(axis=0)
    values = np.linalg.svd(centred, compute_uv=False) ** 2
    share = float(values[:64].sum() / values.sum())
    squared = (x * x).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 1e-12))
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, :k]
    logs = np.log(nearest[:, -1:] / nearest[:, :-1])
    mle = float(np.mean((k - 1) / logs.sum(axis=1)))
    return {"top64_variance_share": round(share, 3), "intrinsic_dimension_mle": round(mle, 1)}
