"""`medsearch-index eval --maps N`: are relevance maps faithful on a site's own images and model?

For up to N labelled images, each against the prompt of its first label (alphabetically), the gradient
map the API serves (core.maps.explain) is computed on the image as it was indexed, and its deletion and
insertion areas are compared with random masking orders (core.maps.faithfulness). A map that does not beat
random masking on a site's images says that its maps are not to be read there.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_frames
from core.imaging.preprocess import is_reduced, rendering_from_version
from core.maps.explain import Explainer, ExplainError
from core.maps.faithfulness import curves, summarise
from core.model.encoder import Encoder
from core.sources import open_source
from indexer.labels import Labelled, text_vectors
from storage.sql.repository import Repository

logger = logging.getLogger(__name__)


def indexed_rendering(options: RenderOptions, preprocessing_version: str, encoder: Encoder) -> RenderOptions:
    """The render options of the index's own decoding (reduced where the index was made so)."""
    reduced = is_reduced(rendering_from_version(preprocessing_version))
    return replace(options, reduce_to=encoder.decode_side if reduced else 0)


def map_faithfulness(repository: Repository, data: Labelled, encoder: Encoder, options: RenderOptions,
                     pairs: int, prompts: dict[str, list[str]] | None = None) -> dict[str, Any]:
    try:
        explainer = Explainer.of(encoder)
    except ExplainError as exc:
        return {"note": str(exc)}
    images = repository.get_images(data.image_ids[:pairs].tolist())
    found, sources, left_out = [], {}, 0
    for image_id, labels in zip(data.image_ids[:pairs].tolist(), data.labels[:pairs], strict=True):
        image = images.get(int(image_id))
        if image is None or not image.sources or not labels:
            continue
        source = image.sources[0]
        try:
            if source.archive not in sources:
                sources[source.archive] = open_source(source.archive)
            pixels = load_image_frames(sources[source.archive].read(source.path), source.path, replace(
                options, frames=f"frame:{source.frame_index}"))[0].pixels
        except Exception as exc:  # a file gone or changed is left out, never fatal
            logger.warning("image %d is left out of the map check: %s", image_id, type(exc).__name__)
            left_out += 1
            continue
        query = text_vectors(encoder, [sorted(labels)[0]], prompts)[0]
        model_image = encoder.preprocess([pixels])[0]
        grid = explainer.gradient(model_image, query)
        found.append(curves(explainer, model_image, query, grid.values, seed=int(image_id)))
    if not found:
        return {"note": "no labelled image could be read again", "left_out": left_out}
    summary = summarise(found).to_dict()
    return {**summary, "left_out": left_out, "method": "gradient", "grid": [explainer.rows, explainer.cols],
            "beats_random": bool(summary["deletion_margin"] > 0 and summary["insertion_margin"] > 0),
            "note": "areas under the score curves when the map's most relevant patches are masked first "
                    "(deletion: lower is better) or restored first (insertion: higher is better), beside "
                    "random orders; margins in cosine x fraction of patches"}


def map_lines(found: dict[str, Any]) -> list[str]:
    if "pairs" not in found:
        return ["", f"Relevance maps: {found.get('note')}"]
    return ["", f"## Relevance maps ({found['pairs']} images, {found['grid'][0]} x {found['grid'][1]} patches)", "",
            "| curve | map | random | margin | map better in |", "|---|---:|---:|---:|---:|",
            f"| deletion (lower is better) | {found['deletion']:.4f} | {found['random_deletion']:.4f} | "
            f"{found['deletion_margin']:.4f} | {found['deletion_wins']:.0%} |",
            f"| insertion (higher is better) | {found['insertion']:.4f} | {found['random_insertion']:.4f} | "
            f"{found['insertion_margin']:.4f} | {found['insertion_wins']:.0%} |", "",
            "The maps beat random masking on these images." if found["beats_random"] else
            "The maps do NOT beat random masking on these images: do not read them here."]
