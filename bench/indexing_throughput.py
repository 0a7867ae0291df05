"""Indexing throughput on DICOM input: the whole pipeline against the bare model on the same batches.

    .venv/bin/python -m bench.indexing_throughput --model data/random-medsiglip --images 12 --batch-size 4
    .venv/bin/python -m bench.indexing_throughput --model data/random-base --images 96 --batch-size 16 --naive

(make the models with `medsearch-index random-model OUT --shape medsiglip|base`.)

Figures, all measured in this run on this machine:
- bare model images/s: the model alone (`start_encoding`) over the batches the pipeline assembles;
- end-to-end images/s: `run_indexing` over a folder of distinct DICOM files (read, decode, window,
  preprocess in worker processes, encode, write to SQLite + FAISS), model already loaded;
- their ratio; the same into a fresh index with the decoding workers already started (a long run's
  steady state: the first run pays their start, seconds of imports); the time of a rerun over the
  unchanged archive as a fraction of the first run;
- with --quantize: int8 images/s and the cosine of int8 to fp32 embeddings;
- with --reports: the warm-worker run again over the same files with a manifest giving each a report of
  ~10 sentences none of which the analyzer has seen (bench/report_bench.py's templates), so that
  every report is analysed cold: images/s with and without reports.
Results also go to bench/results/indexing_<model>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from bench.common import write_result
from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_file
from core.model.encoder import HFEncoder, PreprocessorSpec
from core.model.inputs import assemble
from core.reports import report_analyzer
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.pipeline.load import LoadOptions, LoadPool
from indexer.sample import pydicom_test_files
from storage.opening import open_index

SOURCES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "US1_J2KR.dcm", "image_dfl.dcm"]


def make_archive(root: Path, count: int) -> Path:
    """`count` distinct DICOM files: real pydicom test files, each with its own pixel noise."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sources = [pydicom_test_files() / name for name in SOURCES if (pydicom_test_files() / name).exists()]
    for i in range(count):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
        pixels = ds.pixel_array
        noise = rng.integers(0, 4, pixels.shape).astype(pixels.dtype)
        if ds.get("PhotometricInterpretation", "").startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
        ds.PixelData = (pixels + noise).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.7{i}"
        ds.save_as(root / f"img{i:04d}.dcm")
    return root


def reported_archive(archive: Path, root: Path) -> Path:
    """A copy of `archive` whose manifest gives every file a report of new sentences."""
    import csv
    import random

    from bench.report_bench import sentences

    shutil.copytree(archive, root)
    files = sorted(p.name for p in root.iterdir())
    fresh = sentences(report_analyzer(), 12 * len(files), random.Random(7))
    with open(root / "manifest.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "report"])
        for i, name in enumerate(files):
            writer.writerow([name, " ".join(fresh[12 * i:12 * (i + 1)])])
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder (with --encoder null: its processor only)")
    parser.add_argument("--encoder", choices=("model", "null"), default="model",
                        help="null: the pipeline's own ceiling by image size class, no model (bench/pipeline.py)")
    parser.add_argument("--input-size", type=int, help="with --encoder null: the processor at this input size")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core but one")
    parser.add_argument("--quantize", action="store_true", help="also measure dynamic int8 on the CPU")
    parser.add_argument("--reports", action="store_true", help="also index the files with a report each")
    parser.add_argument("--naive", action="store_true", help="also time the naive loop: one image per forward "
                        "pass, the processor called per image (the seed article's approach)")
    args = parser.parse_args()
    if args.encoder == "null":
        from bench.pipeline import run

        figures = run(args.model, args.input_size, args.batch_size)
        name = f"pipeline_null_{figures['input_size']}px"
        print(f"written {write_result(name, figures)}")
        return
    workers = args.workers if args.workers is not None else max(0, (os.cpu_count() or 1) - 1)

    work = Path(tempfile.mkdtemp(prefix="medsearch-bench-"))
    pool = None
    try:
        archive = make_archive(work / "archive", args.images)
        # as the CLI does: workers start while the model loads
        pool = LoadPool(workers, LoadOptions(reduced=True), PreprocessorSpec(args.model)) if workers else None
        encoder = HFEncoder.load(args.model, rendering="reduced")
        reduced = RenderOptions(reduce_to=encoder.decode_side)
        files = sorted(archive.iterdir())
        resized = encoder.preprocess([load_image_file(f, reduced).pixels for f in files])
        batches = [assemble(resized[i:i + args.batch_size], encoder.input_buffer(args.batch_size))
                   for i in range(0, len(files), args.batch_size)]
        encoder.start_encoding(batches[0][:1]).result()  # warm-up
        started = time.perf_counter()
        bare_vectors = np.vstack([encoder.start_encoding(batch).result() for batch in batches])
        bare = len(files) / (time.perf_counter() - started)

        with open_index(work / "db", create=True) as (store, repository):
            first = run_indexing(open_source(archive), store, repository, encoder, batch_size=args.batch_size,
                                 pool=pool)
            rerun = run_indexing(open_source(archive), store, repository, encoder, batch_size=args.batch_size,
                                 pool=pool)
            assert first.indexed == len(files), f"expected {len(files)} distinct images, got {first.indexed}"
        with open_index(work / "db-warm", create=True) as (store, repository):  # the workers started already
            warm = run_indexing(open_source(archive), store, repository, encoder, batch_size=args.batch_size,
                                pool=pool)
        if args.reports:
            with_reports = reported_archive(archive, work / "archive-reports")
            with open_index(work / "db-reports", create=True, reports=report_analyzer()) as (store, repository):
                reported = run_indexing(open_source(with_reports), store, repository, encoder,
                                        batch_size=args.batch_size, pool=pool)
        end_to_end = first.indexed / first.seconds
        steady = warm.indexed / warm.seconds
        result: dict[str, object] = {
            "model": args.model, "dim": encoder.dim, "images": len(files), "batch_size": args.batch_size,
            "workers": workers, "bare_model_images_per_s": round(bare, 3),
            "end_to_end_images_per_s": round(end_to_end, 3), "ratio": round(end_to_end / bare, 3),
            "warm_workers_images_per_s": round(steady, 3), "warm_ratio": round(steady / bare, 3),
            "first_run_s": round(first.seconds, 3), "rerun_s": round(rerun.seconds, 3),
            "rerun_fraction": round(rerun.seconds / first.seconds, 4),
            "stage_seconds": {k: round(v, 3) for k, v in first.stage_seconds.items()},
        }
        if args.reports:
            result["with_reports_images_per_s"] = round(reported.indexed / reported.seconds, 3)
            result["with_reports_over_without"] = round(reported.indexed / reported.seconds / steady, 3)
        if args.naive:
            started = time.perf_counter()
            for f in files:
                encoder.encode_images([load_image_file(f).pixels])  # read+render, processor, one forward each
            naive = len(files) / (time.perf_counter() - started)
            result["naive_loop_images_per_s"] = round(naive, 3)
            result["end_to_end_over_naive"] = round(end_to_end / naive, 3)
        if args.quantize:
            quantized = HFEncoder.load(args.model, quantize="int8")
            started = time.perf_counter()
            int8_vectors = np.vstack([quantized.start_encoding(batch).result() for batch in batches])
            result["int8_images_per_s"] = round(len(files) / (time.perf_counter() - started), 3)
            cosines = np.sum(int8_vectors * bare_vectors, axis=1)
            result["int8_cosine_to_fp32_min"] = round(float(cosines.min()), 4)
            result["int8_cosine_to_fp32_mean"] = round(float(cosines.mean()), 4)
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(work, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:28} {value}")
    print(f"written {write_result(f'indexing_{Path(args.model).name}', result)}")


if __name__ == "__main__":
    main()
