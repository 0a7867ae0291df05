"""Feeding the model: batches through preallocated buffers, the write of a batch while the next one
encodes, zip members read by the workers, the batch size and the compiled model. Real SQLite, FAISS,
DICOM decoding and the tiny SigLIP; the CUDA-only parts (pinned memory, non-blocking copies) run their
CPU paths here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from core.model.device import CPU_BATCH, batch_size_for
from core.model.encoder import HFEncoder
from core.reports import report_analyzer
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.pipeline import handover
from indexer.pipeline.encode import BatchEncoder
from indexer.pipeline.load import Frame
from storage.opening import open_index
from tests.conftest import dicom_file, rows_by_path


class Recording:
    """The real encoder, noting when each batch starts and when its vectors are taken."""

    def __init__(self, encoder: HFEncoder) -> None:
        self._encoder, self.events = encoder, []

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def start_encoding(self, batch: np.ndarray):
        number = sum(1 for event in self.events if event[0] == "start")
        self.events.append(("start", number))
        pending, events = self._encoder.start_encoding(batch), self.events

        class Noted:
            def result(self) -> np.ndarray:
                events.append(("result", number))
                return pending.result()

        return Noted()


def copies(folder: Path, names: dict[str, str]) -> Path:
    folder.mkdir()
    for target, name in names.items():
        shutil.copy2(dicom_file(name), folder / target)
    return folder


def test_a_batch_is_written_while_the_next_one_encodes(encoder: HFEncoder, tmp_path: Path):
    archive = copies(tmp_path / "a", {"a.dcm": "CT_small.dcm", "b.dcm": "MR_small.dcm", "c.dcm": "JPEG2000.dcm"})
    recording = Recording(encoder)
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        result = run_indexing(open_source(archive), store, repository, recording, batch_size=1)  # type: ignore[arg-type]
        assert result.indexed == 3 and store.ntotal == 3
    starts = [event for event in recording.events if event[0] == "start"]
    assert len(starts) == 3
    # batch 1 starts before batch 0's vectors are taken (and written): the write overlaps the encoding
    assert recording.events.index(("start", 1)) < recording.events.index(("result", 0))


def test_the_same_pixels_in_adjacent_batches_are_encoded_once(encoder: HFEncoder, tmp_path: Path):
    """The second batch shares pixels with the one in flight: it waits for it, then links to it."""
    archive = copies(tmp_path / "a", {"a.dcm": "CT_small.dcm", "b.dcm": "CT_small.dcm", "c.dcm": "MR_small.dcm"})
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        result = run_indexing(open_source(archive), store, repository, encoder, batch_size=1)
        rows = rows_by_path(repository)
        assert (result.indexed, result.encoded, result.linked) == (2, 2, 1)
        assert rows["a.dcm"].id == rows["b.dcm"].id and store.ntotal == repository.count_images() == 2


def test_batches_larger_than_a_buffer_and_buffers_reused(encoder: HFEncoder):
    from core.imaging.images import load_image_file

    pixels = [load_image_file(dicom_file(name)).pixels for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")]
    frames = [Frame(str(i), encoder.preprocess([p])[0], None, "dicom") for i, p in enumerate(pixels * 3)]  # type: ignore[arg-type]
    batches = BatchEncoder(encoder, batch_size=2)
    first = batches.start(frames)  # 9 frames: 5 forward passes through 2 buffers
    second = batches.encode(frames[:3])
    expected = encoder.encode_images(pixels * 3)
    assert np.allclose(first.result(), expected, atol=1e-5)
    assert np.allclose(second, expected[:3], atol=1e-5)


def test_workers_read_zip_members_themselves(encoder: HFEncoder, tmp_path: Path):
    archive = copies(tmp_path / "a", {"a.dcm": "CT_small.dcm", "b.dcm": "MR_small.dcm", "c.dcm": "JPEG2000.dcm"})
    zipped = Path(shutil.make_archive(str(tmp_path / "archive"), "zip", archive))
    source = open_source(zipped)
    assert source.random_access
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        result = run_indexing(source, store, repository, encoder, workers=1, batch_size=2)
        zip_rows = {path: row.pixel_sha256 for path, row in rows_by_path(repository).items()}
    with open_index(tmp_path / "db2", create=True, reports=report_analyzer()) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder, workers=0)
        folder_rows = {path: row.pixel_sha256 for path, row in rows_by_path(repository).items()}
    assert result.indexed == 3 and zip_rows == folder_rows


def test_the_batch_size_follows_free_memory():
    assert batch_size_for(80 * 1024**3, 150e6) == 256  # 0.7 x 80 GiB / 150 MB an image -> 382 -> 256
    assert batch_size_for(80 * 1024**3, 1e6) == 512  # capped
    assert batch_size_for(1024**3, 2e9) == 1  # never below one


def test_the_cpu_suggestion_and_sdpa_attention(encoder: HFEncoder):
    assert encoder.suggest_batch_size() == CPU_BATCH
    assert encoder.attention == "sdpa"


def test_the_compiled_model_gives_the_same_vectors(tiny_model_dir: Path, encoder: HFEncoder):
    from core.imaging.images import load_image_file

    compiled = HFEncoder.load(str(tiny_model_dir), device="cpu", compile_model=True)
    pixels = [load_image_file(dicom_file(name)).pixels for name in ("CT_small.dcm", "MR_small.dcm")]
    assert np.allclose(compiled.encode_images(pixels), encoder.encode_images(pixels), atol=1e-4)


def segments(owner: int) -> list[Path]:
    return sorted(handover.SHM_DIR.glob(f"{handover.PREFIX}{owner}_*"))


def test_pixels_cross_through_shared_memory_and_no_segment_is_left(encoder: HFEncoder, tmp_path: Path):
    archive = copies(tmp_path / "a", {"a.dcm": "CT_small.dcm", "b.dcm": "MR_small.dcm", "c.dcm": "JPEG2000.dcm"})
    pixels = [np.arange(12, dtype=np.uint8).reshape(2, 2, 3), np.full((3, 2), 7, dtype=np.uint8)]
    shared = handover.send(pixels, os.getpid())
    assert shared is not None and len(segments(os.getpid())) == 1
    assert all(np.array_equal(a, b) for a, b in zip(handover.receive(shared), pixels, strict=True))
    assert segments(os.getpid()) == []
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        pooled = run_indexing(open_source(archive), store, repository, encoder, workers=1, batch_size=2)
        pooled_rows = {path: row.pixel_sha256 for path, row in rows_by_path(repository).items()}
        _, vectors = repository.get_embeddings([rows_by_path(repository)["a.dcm"].id], encoder.dim)
    assert pooled.indexed == 3 and segments(os.getpid()) == []
    with open_index(tmp_path / "db2", create=True, reports=report_analyzer()) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder, workers=0)
        assert pooled_rows == {path: row.pixel_sha256 for path, row in rows_by_path(repository).items()}
        _, inline = repository.get_embeddings([rows_by_path(repository)["a.dcm"].id], encoder.dim)
    assert np.allclose(vectors, inline, atol=1e-6)


def test_segments_of_a_killed_run_are_swept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)  # a process that has ended: its segments are a killed run's leftovers
    shared = handover.send([np.zeros((4, 4), dtype=np.uint8)], pid)
    mine = handover.send([np.zeros((4, 4), dtype=np.uint8)], os.getpid())
    assert shared is not None and mine is not None and len(segments(pid)) == 1
    assert handover.sweep() >= 1 and segments(pid) == []
    assert len(segments(os.getpid())) == 1  # a live run's segment is left alone
    handover.receive(mine)


def test_a_file_taking_the_pixels_of_a_replaced_one_in_the_next_batch(encoder: HFEncoder, tmp_path: Path):
    """a.dcm is replaced (its image loses its only source and goes) while b.dcm, in the next batch,
    brings a.dcm's old pixels in the same case: b waits for a's batch and becomes an image of its own."""
    archive = copies(tmp_path / "a", {"a.dcm": "CT_small.dcm"})
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder, batch_size=1)
        shutil.copy2(dicom_file("MR_small.dcm"), archive / "a.dcm")
        shutil.copy2(dicom_file("CT_small.dcm"), archive / "b.dcm")
        again = run_indexing(open_source(archive), store, repository, encoder, batch_size=1)
        rows = rows_by_path(repository)
        assert again.failed == 0 and set(rows) == {"a.dcm", "b.dcm"}
        assert store.ntotal == repository.count_images() == 2 and store.verify() == []
