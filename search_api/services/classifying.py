"""Classifying one image, an upload or an indexed one: zero-shot with SigLIP's semantics (each label's
own sigmoid probability of its prompt, the softmax across the labels) or with a stored probe (its
calibrated probabilities), the entropy of the labels' shares, a review flag, and the labels of the
nearest indexed cases (an indexed image itself left out)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.imaging.images import LoadedImage
from storage.sql.probes import Probe

if TYPE_CHECKING:
    from search_api.services.search import SearchService

PROBE_MIN_AUC = 0.75  # below this cross-validated AUC a probe's answer is flagged for review


@dataclass(frozen=True)
class LabelScore:
    label: str
    cosine: float | None  # to the label's prompt (zero-shot); None for a probe
    probability: float  # sigmoid(scale * cos + bias): SigLIP's per-label probability, or the probe's
    softmax: float  # share among the candidate labels


@dataclass(frozen=True)
class Classification:
    labels: list[LabelScore]
    entropy: float  # normalised to [0, 1] by log(number of labels)
    requires_human_review: bool
    review_reasons: list[str]
    neighbour_votes: list[tuple[str, int, float]]  # label, count, frequency among the neighbours
    neighbours: int
    probe: str | None = None  # the probe that scored the labels; None: zero-shot
    neighbour_ids: list[int] = field(default_factory=list)  # the cases that voted, nearest first


def classify(service: SearchService, image: LoadedImage | int, prompts: dict[str, str] | None, neighbours: int = 10,
             probe: Probe | None = None) -> Classification:
    """Labels for an upload or an indexed image (by id): zero-shot on `prompts`, or the probe's."""
    own = image if isinstance(image, int) else None
    vector = service.image_vector(image) if isinstance(image, int) else service.encoder.encode_images([image.pixels])[0]
    reasons = []
    if probe is not None:
        names = list(probe.labels)
        cosines: list[float | None] = [None] * len(names)
        sigmoid = probe.probabilities(vector[None, :])[0].astype(np.float64)
        shares = sigmoid / max(float(sigmoid.sum()), 1e-12)
    else:
        names = list(prompts or {})
        texts = np.stack([service.text_vector(prompt) for prompt in (prompts or {}).values()])
        raw = texts @ vector
        cosines = [float(c) for c in raw]
        scale = getattr(service.encoder, "logit_scale", None) or 1.0
        bias = getattr(service.encoder, "logit_bias", None) or 0.0
        logits = scale * raw + bias
        sigmoid = 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max())
        shares = shifted / shifted.sum()
    entropy = float(-(shares * np.log(np.clip(shares, 1e-12, 1))).sum() / math.log(len(shares))) if (
        len(shares) > 1) else 0.0
    scores = sorted((LabelScore(label, c, float(p), float(s)) for label, c, p, s in
                     zip(names, cosines, sigmoid, shares, strict=True)), key=lambda x: -x.probability)
    if scores[0].probability < service.review_min_probability:
        reasons.append(f"top probability {scores[0].probability:.2f} < {service.review_min_probability}")
    if entropy > service.review_max_entropy:
        reasons.append(f"normalised entropy {entropy:.2f} > {service.review_max_entropy}")
    if probe is not None:
        auc = probe.metrics.get("labels", {}).get(scores[0].label, {}).get("auc")
        if auc is None or auc < PROBE_MIN_AUC:
            reasons.append(f"the probe's cross-validated AUC for {scores[0].label!r} is "
                           f"{'undefined' if auc is None else f'{auc:.2f}'} < {PROBE_MIN_AUC}")
    votes: Counter[str] = Counter()
    found = service.store.search(vector[None, :], neighbours + (own is not None))[0] if neighbours else []
    nearest = [image_id for image_id, _ in found if image_id != own][:neighbours]
    neighbour_images = service.repository.get_images(nearest)
    voters = [i for i in nearest if i in neighbour_images]
    for image_id in voters:
        votes.update(set(neighbour_images[image_id].metadata.labels))
    counted = len(voters)
    return Classification(scores, entropy, bool(reasons), reasons,
                          [(label, n, n / counted) for label, n in votes.most_common()], counted,
                          probe.name if probe is not None else None, voters)
