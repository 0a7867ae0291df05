"""The pipeline's own ceiling: `run_indexing` with a null encoder (no model), by image size class.

    .venv/bin/python -m bench.indexing_throughput --encoder null --model data/random-base --input-size 448

Everything but the model runs as in a real run: listing, reading, hashing, decoding at the model's input
size, rendering, the resize to the model's input in worker processes, batch assembly, SQLite and FAISS
writes. The null encoder turns each batch into vectors of its pixel means (L2-normalised), so its
cost is near zero. Figures, all measured in this run:
- images/s in one process (`--workers 0`: every stage on one core, the per-core rate) and with one worker
  per core (the machine's ceiling), by class; the per-core rate also with full-resolution decoding (an
  index made before decoding at the model's size), the same run;
- bytes per image crossing from a worker to the main process (8-bit pixels at the model's size through
  shared memory, the rest of the outcome pickled through the result pipe), against the float32 pixel
  values sent before through the pipe (3 x side x side x 4);
- an ESTIMATE of the cores needed to feed 500 images/s (500 / per-core rate);
- a checkpoint of a 100k x 1152 index: saved whole, against appending 1,000 vectors to its log.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from core.model.encoder import ImagePreprocessor, PreprocessorSpec, Ready, describe_model, l2_normalise
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.pipeline.load import LoadOptions, LoadPool, Task, at_model_size, load
from indexer.sample import pydicom_data_files, pydicom_test_files
from storage.opening import open_index
from storage.vectors import delta
from storage.vectors.index import VectorIndex

# class -> (source file, files to make, side to resample the source to or None, noise)
CLASSES: dict[str, tuple[str, int, int | None]] = {
    "<0.1 MP (CT 128x128)": ("CT_small.dcm", 96, None),
    "0.1-1 MP (CT 512x512)": ("693_UNCR.dcm", 64, None),
    "1-4 MP (CR 1955x1841)": ("RG1_UNCR.dcm", 24, None),
    ">=4 MP (CR 2048x2048, 12-bit)": ("RG1_UNCR.dcm", 24, 2048),
    "1-4 MP (CR 1955x1841, JPEG 2000)": ("RG1_J2KR.dcm", 8, None),
}


class NullEncoder:
    """core.model.encoder.Encoder without a model: the processor's resize, then vectors of pixel means."""

    def __init__(self, model: str, reduced: bool = True) -> None:
        self._pre = ImagePreprocessor.load(PreprocessorSpec(model))
        rendering = "reduced" if reduced else ""
        self._fingerprint = replace(describe_model(model, rendering=rendering), name="null-encoder")
        self._spec = PreprocessorSpec(model)

    fingerprint = property(lambda self: self._fingerprint)
    dim = property(lambda self: self._fingerprint.dim)
    decode_side = property(lambda self: self._pre.input.decode_side)
    preprocessor_spec = property(lambda self: self._spec)

    def preprocess(self, images: Any) -> list[np.ndarray]:
        return self._pre(images)

    def input_buffer(self, rows: int) -> np.ndarray:
        return np.empty((rows, self._pre.input.height, self._pre.input.width, 3), dtype=np.uint8)

    def start_encoding(self, batch: np.ndarray) -> Ready:
        means = batch.reshape(len(batch), -1, 3).mean(axis=1, dtype=np.float32)
        return Ready(l2_normalise(np.tile(means, (1, self.dim // 3 + 1))[:, :self.dim] + 1e-3))

    def encode_images(self, images: Any) -> np.ndarray:
        raise NotImplementedError("the null encoder only serves the indexing bench")

    def encode_texts(self, texts: Any) -> np.ndarray:
        return np.zeros((len(texts), self.dim), dtype=np.float32)


def source_file(name: str) -> Path | None:
    for folder in (pydicom_data_files(), pydicom_test_files()):
        if folder is not None and (folder / name).exists():
            return folder / name
    return None


def make_class(root: Path, name: str, count: int, side: int | None) -> Path | None:
    """`count` DICOM files from one real file: distinct pixels (noise) where uncompressed, distinct
    instance UIDs where compressed (their pixels are decoded every time all the same)."""
    path = source_file(name)
    if path is None:
        return None
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    template = pydicom.dcmread(path)
    compressed = template.file_meta.TransferSyntaxUID.is_compressed
    pixels = None if compressed else template.pixel_array
    if pixels is not None and side is not None:
        from PIL import Image

        grown = Image.fromarray(pixels.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BICUBIC)
        pixels = np.clip(np.asarray(grown), 0, 4095).astype(np.uint16)
        template.Rows = template.Columns = side
        template.BitsStored, template.HighBit = 12, 11
    for i in range(count):
        ds = template.copy()
        if pixels is not None:
            ds.PixelData = (pixels + rng.integers(0, 4, pixels.shape).astype(pixels.dtype)).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.9{i}"
        ds.save_as(root / f"img{i:04d}.dcm")
    return root


def crossing_bytes(archive: Path, encoder: NullEncoder) -> tuple[float, float, int]:
    """Per image: the bytes handed over (pixels in shared memory + the pickled outcome through the result
    pipe), of them through the pipe, and the float32 pixel values the pipeline sent before."""
    options = at_model_size(LoadOptions(reduced=True), encoder.decode_side)
    total, piped = [], []
    for path in sorted(archive.iterdir())[:4]:
        task = Task(entry=None, source=path.name, data=None, file_path=str(path), known_sha256=None,  # type: ignore[arg-type]
                    manifest_row=None)
        outcome = load(task, options, encoder.preprocess)
        pixels = sum(frame.pixels.nbytes for frame in outcome.frames)
        for frame in outcome.frames:
            frame.pixels = np.empty(0, dtype=np.uint8)
        pipe = len(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
        frames = max(1, len(outcome.frames))
        total.append((pixels + pipe) / frames)
        piped.append(pipe / frames)
    side = encoder.decode_side // 2
    return float(np.mean(total)), float(np.mean(piped)), 3 * side * side * 4


def rate(archive: Path, encoder: NullEncoder, workers: int, batch_size: int) -> float:
    """Images/s of the second of two runs into fresh indexes (the first warms the workers up)."""
    work = Path(tempfile.mkdtemp(prefix="medsearch-null-"))
    reduced = encoder.fingerprint.preprocessing_version.endswith("reduced")
    pool = LoadPool(workers, LoadOptions(reduced=reduced), encoder.preprocessor_spec, local=encoder.preprocess,
                    local_side=encoder.decode_side) if workers else None
    try:
        for attempt in range(2):
            with open_index(work / f"db{attempt}", create=True) as (store, repository):
                result = run_indexing(open_source(archive), store, repository, encoder,  # type: ignore[arg-type]
                                      batch_size=batch_size, pool=pool, workers=workers)
        files = len(list(archive.iterdir()))
        assert result.failed == 0 and result.indexed + result.linked >= files, result
        return files / result.seconds
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(work, ignore_errors=True)


def checkpoint_costs(dim: int = 1152, total: int = 100_000, added: int = 1000) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="medsearch-ckpt-"))
    try:
        vectors = l2_normalise(np.random.default_rng(0).normal(size=(total, dim)).astype(np.float32))
        index = VectorIndex.create(dim)
        index.add(np.arange(total, dtype=np.int64), vectors)
        started = time.perf_counter()
        index.save(work / "index.faiss", "bench", "t")
        whole = time.perf_counter() - started
        log = delta.delta_path(work / "index.faiss")
        delta.start_log(log, "bench", "t", dim)
        started = time.perf_counter()
        delta.append(log, [delta.Change(np.arange(added, dtype=np.int64), vectors[:added])])
        appended = time.perf_counter() - started
        return {"vectors": total, "dim": dim, "save_whole_s": round(whole, 3), "added": added,
                "append_to_log_s": round(appended, 4), "ratio": round(whole / appended, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(model: str, input_size: int | None, batch_size: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="medsearch-pipeline-"))
    try:
        if input_size:  # the model's processor at another input size (MedSigLIP's 448 from a base folder)
            shutil.copytree(model, work / "model")
            config = json.loads((work / "model" / "processor_config.json").read_text())
            config["image_processor"]["size"] = {"height": input_size, "width": input_size}
            (work / "model" / "processor_config.json").write_text(json.dumps(config))
            model = str(work / "model")
        encoder, full_resolution = NullEncoder(model), NullEncoder(model, reduced=False)
        cores = os.cpu_count() or 1
        rows = []
        for label, (name, count, side) in CLASSES.items():
            archive = make_class(work / f"class{len(rows)}", name, count, side)
            if archive is None:
                print(f"{label}: {name} is not installed (pydicom-data): skipped")
                continue
            single = rate(archive, encoder, 0, batch_size)
            full = rate(archive, full_resolution, 0, batch_size)
            pooled = rate(archive, encoder, cores, batch_size)
            sent, piped, before = crossing_bytes(archive, encoder)
            row = {"class": label, "images": count, "per_core_images_per_s": round(single, 1),
                   "per_core_full_resolution_images_per_s": round(full, 1),
                   f"all_{cores}_cores_images_per_s": round(pooled, 1), "bytes_per_image_crossing": round(sent),
                   "of_them_through_the_pipe": round(piped),
                   "bytes_per_image_before": before,
                   "ESTIMATE_cores_for_500_per_s": round(500 / single, 1)}
            print(json.dumps(row))
            rows.append(row)
        return {"encoder": "null", "processor_from": model, "input_size": encoder.decode_side // 2,
                "batch_size": batch_size, "cores": cores, "rows": rows, "checkpoint": checkpoint_costs()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
