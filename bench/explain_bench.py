"""Relevance maps: seconds per explanation and faithfulness, per model shape, on real DICOM files.

    .venv/bin/python -m bench.explain_bench --models data/random-siglip,data/random-base [--pairs 20]

For each model: p50 seconds of one gradient map and of one occlusion map (the API's default window) on
this machine's device; over `--pairs` image/query pairs (real files shipped with pydicom, four radiology
phrases): the deletion and insertion areas of the gradient map (input gradient x pixels, the API's), of
the last layer's token gradient x activation (the variant it was chosen over) and of the occlusion map,
each beside random orders, and the rank correlation of the gradient map with occlusion. Models named
with --timing-only (the base and MedSigLIP's full shape on a CPU, where an occlusion map takes minutes)
get the timings only. Writes bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from bench.common import RESULTS, machine
from core.maps.explain import Explainer, occlusion_window
from core.maps.faithfulness import curves, rank_correlation, summarise
from core.model.encoder import HFEncoder
from indexer.sample import decodable_test_images

TEXTS = ["chest x-ray pleural effusion", "brain mri", "ct liver mass", "knee fracture"]
DEFAULT_PASSES = 257  # search_api/services/explaining.py's default occlusion budget


def p50(seconds: list[float]) -> float:
    return round(statistics.median(seconds), 4)


def bench_model(path: str, pairs: int, repeat: int, timing_only: bool) -> dict[str, Any]:
    encoder = HFEncoder.load(path, local_files_only=True)
    explainer = Explainer.of(encoder)
    window = occlusion_window(explainer.rows, explainer.cols, DEFAULT_PASSES)
    images = decodable_test_images(max(pairs, repeat))
    queries = encoder.encode_texts(TEXTS)
    model_images = [encoder.preprocess([pixels])[0] for pixels in images]
    row: dict[str, Any] = {"model": path, "input": [explainer.input.height, explainer.input.width],
                           "grid": [explainer.rows, explainer.cols], "device": encoder.device,
                           "occlusion_window": window, "occlusion_passes": explainer.passes("occlusion", window)}
    explainer.gradient(model_images[0], queries[0])  # warm-up
    row["p50_s_gradient"] = p50([explainer.gradient(model_images[n], queries[n % 4]).seconds for n in range(repeat)])
    if timing_only:  # an occlusion map from the seconds of 16 of its passes (batched as the map runs them)
        keep = np.ones((16, explainer.rows, explainer.cols), dtype=bool)
        started = time.perf_counter()
        explainer.masked_scores(model_images[0], queries[0], keep)
        row["p50_s_occlusion"] = round((time.perf_counter() - started) / 16 * row["occlusion_passes"], 2)
        row["occlusion_estimated"] = True
    else:
        row["p50_s_occlusion"] = p50([explainer.occlusion(model_images[n], queries[n % 4], window=window).seconds
                                      for n in range(min(repeat, 3))])
    print(f"{path}: gradient p50 {row['p50_s_gradient']} s, occlusion (window {window}, "
          f"{row['occlusion_passes']} passes) {'estimated' if timing_only else 'p50'} {row['p50_s_occlusion']} s",
          flush=True)
    if timing_only:
        return row
    found: dict[str, list[Any]] = {"gradient": [], "tokens": [], "occlusion": []}
    correlations = []
    started = time.perf_counter()
    for n, image in enumerate(model_images[:pairs]):
        query = queries[n % 4]
        fast = explainer.gradient(image, query)
        tokens = explainer.gradient(image, query, at="tokens")
        slow = explainer.occlusion(image, query, window=window)
        for name, grid in (("gradient", fast), ("tokens", tokens), ("occlusion", slow)):
            found[name].append(curves(explainer, image, query, grid.values, seed=n))
        correlations.append(rank_correlation(fast.values, slow.values))
    row["pairs"] = pairs
    row["faithfulness"] = {name: summarise(curves_of).to_dict() for name, curves_of in found.items()}
    row["spearman_gradient_occlusion"] = round(float(np.mean(correlations)), 3)
    row["faithfulness_seconds"] = round(time.perf_counter() - started, 1)
    for name, summary in row["faithfulness"].items():
        print(f"  {name:9s} deletion {summary['deletion']:.4f} (random {summary['random_deletion']:.4f}, wins "
              f"{summary['deletion_wins']:.2f})  insertion {summary['insertion']:.4f} (random "
              f"{summary['random_insertion']:.4f}, wins {summary['insertion_wins']:.2f})", flush=True)
    print(f"  Spearman(gradient, occlusion) {row['spearman_gradient_occlusion']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="Comma-separated model folders (random SigLIPs).")
    parser.add_argument("--timing-only", default="", help="Comma-separated models measured for time only.")
    parser.add_argument("--pairs", type=int, default=20, help="Image/query pairs for faithfulness.")
    parser.add_argument("--repeat", type=int, default=5, help="Timed explanations per model.")
    args = parser.parse_args()
    timing_only = [m for m in args.timing_only.split(",") if m]
    rows = [bench_model(m, args.pairs, args.repeat, False) for m in args.models.split(",") if m]
    rows += [bench_model(m, args.pairs, min(args.repeat, 3), True) for m in timing_only]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "explain.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
