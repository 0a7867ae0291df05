"""`eval`'s probe sections: zero-shot against a probe on the same held-out patients (out-of-fold, folds
grouped by patient) with paired bootstrap intervals, the learning curve (held-out AUC against the
number of labelled cases per label), and the same comparison across CT renderings (--compare-window).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_frames
from core.model.encoder import Encoder
from core.sources import open_source
from indexer.errors import IndexerError
from indexer.metrics import paired_bootstrap_auc, roc_auc
from indexer.probes.fit import Prior, grouped_folds, train_label
from indexer.probes.train import TrainingSet, learning_curve
from storage.sql.repository import Repository

logger = logging.getLogger(__name__)


def compare(data: TrainingSet, prior: Prior, bootstrap: int = 1000, curve: bool = True) -> dict[str, Any]:
    """Per label: zero-shot and probe AUC on the same out-of-fold images, intervals, the learning curve;
    labels without 2 patients on each side are listed with the reason."""
    labels: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    zero_shot_all = prior.logits(data.vectors)
    for j, label in enumerate(data.labels):
        y = data.targets[:, j]
        try:
            grouped_folds(y, data.groups, label)
        except IndexerError as exc:
            skipped[label] = str(exc)
            continue
        fitted = train_label(data.vectors, y, data.groups, prior, j, label, bootstrap=0)
        zero_shot = zero_shot_all[:, j]
        intervals = paired_bootstrap_auc(zero_shot, fitted.oof_logit, y, data.groups, rounds=bootstrap)
        labels[label] = {
            "positives": int(y.sum()), "negatives": int((~y).sum()),
            "zero_shot_auc": roc_auc(zero_shot, y), "probe_auc": roc_auc(fitted.oof_logit, y),
            "zero_shot_95ci": intervals["a"] if intervals else None,
            "probe_95ci": intervals["b"] if intervals else None,
            "difference_95ci": intervals["b_minus_a"] if intervals else None,
            "probe_ece": fitted.metrics["ece"], "lambda": fitted.metrics["lambda"],
            "learning_curve": learning_curve(data, prior, j, fitted.lam) if curve else [],
        }
    defined = [(v["zero_shot_auc"], v["probe_auc"]) for v in labels.values()
               if v["zero_shot_auc"] is not None and v["probe_auc"] is not None]
    return {"labels": labels, "skipped": skipped,
            "mean_zero_shot_auc": float(np.mean([a for a, _ in defined])) if defined else None,
            "mean_probe_auc": float(np.mean([b for _, b in defined])) if defined else None,
            "held_out": "out-of-fold: each image scored by a probe trained without its patient"}


def rerendered(repository: Repository, data: TrainingSet, encoder: Encoder, options: RenderOptions,
               window: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions into `data`, vectors) of the labelled CT images, decoded again from their files with
    `window` and encoded; files that cannot be read any more are left out (logged)."""
    images = repository.get_images(data.ids.tolist())
    positions, pixels = [], []
    sources: dict[str, Any] = {}
    for position, image_id in enumerate(data.ids.tolist()):
        image = images.get(int(image_id))
        if image is None or not image.sources or (image.metadata.modality or "").upper() != "CT":
            continue
        source = image.sources[0]
        try:
            if source.archive not in sources:
                sources[source.archive] = open_source(source.archive)
            data_bytes = sources[source.archive].read(source.path)
            frame = load_image_frames(data_bytes, source.path, replace(
                options, window=window, frames=f"frame:{source.frame_index}"))[0]
        except Exception as exc:  # a file gone or changed is left out, never fatal
            logger.warning("image %d is left out of the window comparison: %s", image_id, type(exc).__name__)
            continue
        positions.append(position)
        pixels.append(frame.pixels)
    if not pixels:
        return np.empty(0, dtype=np.int64), np.empty((0, encoder.dim), dtype=np.float32)
    vectors = np.vstack([encoder.encode_images(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])
    return np.asarray(positions, dtype=np.int64), vectors


def compare_windows(repository: Repository, data: TrainingSet, encoder: Encoder, prior: Prior,
                    options: RenderOptions, windows: list[str], bootstrap: int = 1000) -> dict[str, Any]:
    """Zero-shot and probe AUC of the labelled CT images rendered each way (same images, same folds)."""
    result: dict[str, Any] = {"windows": {}}
    encoded = {window: rerendered(repository, data, encoder, options, window) for window in windows}
    common = set.intersection(*(set(p.tolist()) for p, _ in encoded.values())) if encoded else set()
    keep = np.asarray(sorted(common), dtype=np.int64)
    result["ct_images"] = len(keep)
    for window, (positions, vectors) in encoded.items():
        rows = np.searchsorted(positions, keep)
        subset = TrainingSet(data.ids[keep], vectors[rows], data.labels, data.targets[keep], data.groups[keep],
                             len(set(data.groups[keep].tolist())), data.fingerprint)
        result["windows"][window] = compare(subset, prior, bootstrap, curve=False) if len(keep) else None
    return result


def plot_learning_curves(comparison: dict[str, Any], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: v for k, v in comparison["labels"].items() if v["learning_curve"]}
    if not labels:
        return None
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for index, (label, row) in enumerate(labels.items()):
        colour = f"C{index % 10}"
        points = row["learning_curve"]
        axis.plot([p["per_label"] for p in points], [p["probe_auc"] for p in points], marker="o", color=colour,
                  label=f"{label}: probe")
        if points[0]["zero_shot_auc"] is not None:
            axis.axhline(points[0]["zero_shot_auc"], color=colour, linestyle="--", linewidth=0.9,
                         label=f"{label}: zero-shot")
    axis.set_xscale("log", base=2)
    axis.set(xlabel="labelled cases per label (positives = negatives)", ylabel="held-out AUC (patients unseen)",
             title="learning curve", ylim=(0, 1.02))
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "learning_curve.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def report_lines(comparison: dict[str, Any], windows: dict[str, Any] | None) -> list[str]:
    def ci(pair: Any) -> str:
        return f"{pair[0]:.2f} to {pair[1]:.2f}" if pair else "-"

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["", "## Zero-shot against a probe, same held-out patients", "",
             f"{comparison['held_out']}; intervals: paired bootstrap over patients.", "",
             "| label | positives | zero-shot AUC | 95% CI | probe AUC | 95% CI | difference 95% CI |",
             "|---|---:|---:|---|---:|---|---|"]
    for label, row in comparison["labels"].items():
        lines.append(f"| {label} | {row['positives']} | {fmt(row['zero_shot_auc'])} | {ci(row['zero_shot_95ci'])} | "
                     f"{fmt(row['probe_auc'])} | {ci(row['probe_95ci'])} | {ci(row['difference_95ci'])} |")
    if comparison["skipped"]:
        lines += ["", "Not compared (a probe cannot be validated by patient):", ""]
        lines += [f"- {reason}" for reason in comparison["skipped"].values()]
    lines += ["", "![learning curve](learning_curve.png)"]
    if windows:
        lines += ["", f"## CT renderings compared ({windows['ct_images']} labelled CT images, decoded again)", "",
                  "| rendering | zero-shot mean AUC | probe mean AUC |", "|---|---:|---:|"]
        for window, row in windows["windows"].items():
            lines.append(f"| {window} | {fmt(row and row['mean_zero_shot_auc'])} | "
                         f"{fmt(row and row['mean_probe_auc'])} |")
    return lines
