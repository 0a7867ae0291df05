"""`medsearch-index eval`: how well search works on a user's own labelled cases.

LABELS.csv: a column `path` (a file's path inside its archive) or `sop_uid`, and a column `labels`
(several separated by `;` or `|`). Computed on the images it names:
- image -> image retrieval: precision@k, recall@k, mAP, where an image is relevant to a query when
  they share a label, and images of the query's own patient are left out (no leakage);
- text -> image retrieval: one prompt per label (PROMPTS.yaml, else the label itself): recall@k, mAP;
- zero-shot classification: ROC AUC per label of SigLIP's sigmoid(scale * cos + bias) with a
  bootstrap 95% interval, and a confusion matrix of the most probable label against the first true one;
- the index in use against exact search: recall@k of its neighbours;
- zero-shot against a probe (indexer/probes/train.py) on the same held-out patients, with paired bootstrap
  intervals and the learning curve, and optionally across CT renderings (indexer/evaluation/probes.py).
Writes report.json, report.md and PNG plots to the report folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.imaging.dicom import RenderOptions
from core.model.encoder import Encoder
from indexer.errors import IndexerError
from indexer.evaluation.maps import indexed_rendering, map_faithfulness, map_lines
from indexer.evaluation.probes import compare, compare_windows, plot_learning_curves, report_lines
from indexer.labels import match, text_vectors
from indexer.metrics import (
    average_precision,
    bootstrap_auc_ci,
    precision_at_k,
    recall_at_k,
    roc_auc,
    roc_curve,
)
from indexer.probes.fit import Prior
from indexer.probes.train import training_set
from storage.sql.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)
KS = (1, 5, 10)


def evaluate(store: Store, repository: Repository, encoder: Encoder, rows: list[tuple[str, str, list[str]]],
             prompts: dict[str, list[str]] | None = None, bootstrap: int = 1000, probes: bool = True,
             windows: list[str] | None = None, render: RenderOptions | None = None, maps: int = 0) -> dict[str, Any]:
    """The report (see the module docstring). `probes`: also zero-shot against a probe on the same
    held-out patients, with the learning curve; `windows` (with `render`): that comparison for the
    labelled CT images decoded again with each window option; `maps`: the relevance maps' faithfulness
    on that many labelled images (indexer/evaluation/maps.py)."""
    manifest = store.manifest
    if manifest is None or manifest.fingerprint_key != encoder.fingerprint.key:
        raise IndexerError("the model loaded is not the one this index was built with: evaluate with --model "
                           f"{manifest.model_name if manifest else '?'}")
    data = match(repository, rows)
    if len(data.image_ids) < 2:
        raise IndexerError(f"only {len(data.image_ids)} labelled image(s) found in the index "
                           f"({data.unmatched} rows matched nothing): nothing to evaluate")
    _, vectors = repository.get_embeddings(data.image_ids.tolist(), encoder.dim)
    all_labels = sorted(set().union(*data.labels))
    report: dict[str, Any] = {"model": encoder.fingerprint.to_dict(), "images": len(data.image_ids),
                              "unmatched_rows": data.unmatched, "labels": {}}

    # image -> image, own patient left out
    similarity = vectors @ vectors.T
    per_k: dict[int, list[float]] = {k: [] for k in KS}
    recalls: dict[int, list[float]] = {k: [] for k in KS}
    aps: list[float] = []
    for q in range(len(data.image_ids)):
        keep = np.array([i != q and (data.patients[q] is None or data.patients[i] != data.patients[q])
                         for i in range(len(data.image_ids))])
        candidates = np.flatnonzero(keep)
        if not len(candidates):
            continue
        order = candidates[np.argsort(-similarity[q, candidates], kind="stable")]
        relevant = np.array([bool(data.labels[q] & data.labels[i]) for i in order])
        for k in KS:
            per_k[k].append(precision_at_k(relevant, k))
            if (r := recall_at_k(relevant, k)) is not None:
                recalls[k].append(r)
        if (ap := average_precision(relevant)) is not None:
            aps.append(ap)
    report["image_to_image"] = {
        "queries": len(per_k[1]), "mAP": _mean(aps),
        **{f"precision@{k}": _mean(per_k[k]) for k in KS}, **{f"recall@{k}": _mean(recalls[k]) for k in KS}}

    # text -> image and zero-shot classification
    prompts = prompts or {}
    texts = text_vectors(encoder, all_labels, prompts)
    cosines = vectors @ texts.T  # images x labels
    scale = getattr(encoder, "logit_scale", None) or 1.0
    bias = getattr(encoder, "logit_bias", None) or 0.0
    probabilities = 1 / (1 + np.exp(-(scale * cosines + bias)))
    text_aps: list[float] = []
    for j, label in enumerate(all_labels):
        positive = np.array([label in labels for labels in data.labels])
        order = np.argsort(-cosines[:, j], kind="stable")
        ranked = positive[order]
        auc = roc_auc(probabilities[:, j], positive)
        interval = bootstrap_auc_ci(probabilities[:, j], positive, rounds=bootstrap) if auc is not None else None
        ap = average_precision(ranked)
        if ap is not None:
            text_aps.append(ap)
        report["labels"][label] = {
            "positives": int(positive.sum()), "prompts": prompts.get(label, [label]),
            "text_to_image": {"AP": ap, **{f"recall@{k}": recall_at_k(ranked, k) for k in KS}},
            "zero_shot_auc": auc, "auc_95ci": list(interval) if interval else None,
            "auc_note": None if auc is not None else "undefined: every image is positive, or none is",
        }
    report["text_to_image_mAP"] = _mean(text_aps)
    defined = [v["zero_shot_auc"] for v in report["labels"].values() if v["zero_shot_auc"] is not None]
    report["zero_shot_mean_auc"] = _mean(defined)
    predicted = probabilities.argmax(axis=1)
    truth = [all_labels.index(sorted(labels)[0]) for labels in data.labels]
    confusion = np.zeros((len(all_labels), len(all_labels)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        confusion[t, p] += 1
    report["confusion_matrix"] = {"labels": all_labels, "rows_true_columns_predicted": confusion.tolist()}

    report["probe_vs_zero_shot"] = report["ct_windows"] = None
    if probes or windows:
        try:
            data_set = training_set(store, repository, encoder, rows, only=all_labels)
        except IndexerError as exc:
            report["probe_note"] = str(exc)
        else:
            prior = Prior(texts, float(scale), float(bias))
            report["probe_vs_zero_shot"] = compare(data_set, prior, bootstrap) if probes else None
            report["ct_windows"] = compare_windows(repository, data_set, encoder, prior, render or RenderOptions(),
                                                   windows, bootstrap) if windows else None

    # the index in use against exact search over every stored vector, for the labelled queries
    chunks = list(repository.iter_embeddings(encoder.dim))
    all_ids = np.concatenate([c[0] for c in chunks])
    all_vectors = np.vstack([c[1] for c in chunks])
    k = min(10, len(all_ids))
    found = store.search(vectors, k)
    exact_order = np.argsort(-(vectors @ all_vectors.T), axis=1, kind="stable")[:, :k]
    overlaps = [len({i for i, _ in hits} & set(all_ids[row].tolist())) / k
                for hits, row in zip(found, exact_order, strict=True)]
    report["relevance_maps"] = map_faithfulness(repository, data, encoder, indexed_rendering(
        render or RenderOptions(), manifest.preprocessing_version, encoder), maps, prompts) if maps else None
    report["index"] = {"kind": store.index_kind, f"recall@{k}_vs_exact": _mean(overlaps)}
    report["_curves"] = {"roc": {label: [a.tolist() for a in roc_curve(probabilities[:, j], np.array(
        [label in labels for labels in data.labels]))] for j, label in enumerate(all_labels)},
        "precision_at_k": {str(k): report["image_to_image"][f"precision@{k}"] for k in KS}}
    return report


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """report.json, report.md and the plots; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    curves = report.pop("_curves")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    written = [out / "report.json"]
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for label, (fpr, tpr) in curves["roc"].items():
        auc = report["labels"][label]["zero_shot_auc"]
        if auc is not None:
            axis.plot(fpr, tpr, label=f"{label} (AUC {auc:.2f})")
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="zero-shot ROC per label")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "roc.png", dpi=110)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    ks = [int(k) for k in curves["precision_at_k"]]
    axis.plot(ks, [curves["precision_at_k"][str(k)] or 0 for k in ks], marker="o")
    axis.set(xlabel="k", ylabel="precision@k", title="image -> image retrieval", ylim=(0, 1.05))
    figure.tight_layout()
    figure.savefig(out / "precision_at_k.png", dpi=110)
    matrix = report["confusion_matrix"]
    figure, axis = plt.subplots(figsize=(1.2 + 0.5 * len(matrix["labels"]), 1 + 0.5 * len(matrix["labels"])))
    axis.imshow(matrix["rows_true_columns_predicted"], cmap="Blues")
    axis.set_xticks(range(len(matrix["labels"])), matrix["labels"], rotation=60, fontsize=7)
    axis.set_yticks(range(len(matrix["labels"])), matrix["labels"], fontsize=7)
    for (row, col), value in np.ndenumerate(np.asarray(matrix["rows_true_columns_predicted"])):
        axis.text(col, row, str(value), ha="center", va="center", fontsize=7)
    axis.set(xlabel="predicted (zero-shot)", ylabel="true (first label)")
    figure.tight_layout()
    figure.savefig(out / "confusion_matrix.png", dpi=110)
    written += [out / "roc.png", out / "precision_at_k.png", out / "confusion_matrix.png"]
    lines = [f"# Retrieval quality: {report['images']} labelled images", "",
             f"Model {report['model']['name']}" + (" (RANDOM weights: figures meaningless)"
                                                   if report["model"]["random_weights"] else ""), "",
             "## Image to image (own patient excluded)", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {format_value(v)} |" for k, v in report["image_to_image"].items()]
    lines += ["", f"Text to image mAP: {format_value(report['text_to_image_mAP'])}; zero-shot mean AUC: "
              f"{format_value(report['zero_shot_mean_auc'])}; index {report['index']['kind']}: "
              + ", ".join(f"{k} {format_value(v)}" for k, v in report["index"].items() if k != "kind"), "",
              "## Per label", "", "| label | positives | text AP | text recall@5 | zero-shot AUC | 95% CI |",
              "|---|---:|---:|---:|---:|---|"]
    for label, row in report["labels"].items():
        ci = row["auc_95ci"]
        lines.append(f"| {label} | {row['positives']} | {format_value(row['text_to_image']['AP'])} | "
                     f"{format_value(row['text_to_image']['recall@5'])} | {format_value(row['zero_shot_auc'])} | "
                     f"{f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else row['auc_note']} |")
    lines += ["", "![ROC](roc.png) ![precision@k](precision_at_k.png) ![confusion](confusion_matrix.png)"]
    if report.get("probe_vs_zero_shot"):
        curve = plot_learning_curves(report["probe_vs_zero_shot"], out)
        written += [curve] if curve else []
        lines += report_lines(report["probe_vs_zero_shot"], report.get("ct_windows"))
    if report.get("relevance_maps"):
        lines += map_lines(report["relevance_maps"])
    lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    written.append(out / "report.md")
    return written


def format_value(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
