"""A user's labelled cases: LABELS.csv (a column `path`, a file's path inside its archive, or `sop_uid`,
and a column `labels`, several separated by `;` or `|`), PROMPTS.yaml (label: prompt, or a list of
prompts), matched to the indexed images; shared by `eval` and `train-probe`."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

import numpy as np

from core.csvsafe import csv_text, unescape_cell
from core.model.encoder import Encoder
from indexer.errors import IndexerError
from storage.sql.repository import Repository


@dataclass
class Labelled:
    image_ids: np.ndarray
    labels: list[set[str]]
    patients: list[str | None]
    names: list[str]
    unmatched: int


def parse_labels(data: bytes, source: str) -> list[tuple[str, str, list[str]]]:
    """(key kind 'path' or 'sop_uid', key, labels) per row. Raises IndexerError naming the problem."""
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    fields = {name.strip().lower(): name for name in reader.fieldnames or []}
    key = "path" if "path" in fields else "sop_uid" if "sop_uid" in fields else None
    if key is None or "labels" not in fields:
        raise IndexerError(f"{source}: needs a 'path' or 'sop_uid' column and a 'labels' column "
                           f"(columns: {', '.join(reader.fieldnames or [])})")
    rows = []
    for line, row in enumerate(reader, start=2):
        value = unescape_cell((row.get(fields[key]) or "").strip())
        labels = [unescape_cell(x.strip()) for x in re.split(r"[;|]", unescape_cell(row.get(fields["labels"]) or ""))
                  if x.strip()]
        if not value or not labels:
            raise IndexerError(f"{source} line {line}: empty {key} or labels")
        rows.append((key, value, labels))
    return rows


def parse_prompts(text: str, source: str) -> dict[str, list[str]]:
    import yaml

    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise IndexerError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise IndexerError(f"{source}: expected 'label: prompt' (or a list of prompts) per line")
    return {str(k): [str(p) for p in (v if isinstance(v, list) else [v])] for k, v in loaded.items()}


def match(repository: Repository, rows: list[tuple[str, str, list[str]]]) -> Labelled:
    everything = repository.get_images(repository.image_ids().tolist())
    by_key: dict[tuple[str, str], int] = {}
    for image_id, image in everything.items():
        for source in image.sources:
            by_key.setdefault(("path", source.path), image_id)
            if source.sop_uid:
                by_key.setdefault(("sop_uid", source.sop_uid), image_id)
    merged: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    unmatched = 0
    for kind, value, labels in rows:
        found = by_key.get((kind, value))
        if found is None:
            unmatched += 1
            continue
        merged.setdefault(found, set()).update(labels)
        names.setdefault(found, value)
    ids = sorted(merged)
    return Labelled(np.asarray(ids, dtype=np.int64), [merged[i] for i in ids],
                    [everything[i].metadata.patient_id for i in ids], [names[i] for i in ids], unmatched)


def text_vectors(encoder: Encoder, labels: list[str], prompts: dict[str, list[str]] | None) -> np.ndarray:
    """labels x dim: the normalised mean text embedding of each label's prompts (the label itself without)."""
    prompts = prompts or {}
    texts = np.stack([encoder.encode_texts(prompts.get(label, [label])).mean(axis=0) for label in labels])
    return (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)


def labels_from_metadata(repository: Repository) -> str:
    """A labels CSV from the index's own metadata: modality and body region of each image."""
    rows = []
    for image in repository.get_images(repository.image_ids().tolist()).values():
        labels = [x for x in (image.metadata.modality, image.metadata.body_part) if x]
        if labels and image.sources:
            rows.append([image.sources[0].path, ";".join(labels)])
    return csv_text(["path", "labels"], rows)
