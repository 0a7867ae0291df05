"""The corpus: every file of pydicom's test files, pydicom-data and deid-data through the indexer.

Each file must be indexed or recorded with a reason; every file that pydicom itself can decode (with
the installed, non-GPL decoders) must be indexed, unless it is an object we skip by design (SEG masks,
RT dose grids) with its reason."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest

from core.imaging.dicom_read import NON_IMAGE_SOP_CLASSES
from core.model.encoder import HFEncoder
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.sample import pydicom_data_files, pydicom_test_files
from storage.opening import open_index


def corpus_folders() -> dict[str, Path]:
    folders = {"pydicom": pydicom_test_files()}
    data = pydicom_data_files()
    if data is not None:
        folders["pydicom-data"] = data
    try:
        import deid_data

        folders["deid-data"] = Path(deid_data.__file__).parent / "data"
    except ImportError:
        pass
    return folders


def pydicom_decodes(path: Path) -> bool:
    """The reference: pydicom reads the file and decodes its pixels (and it is meant to be an image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            if str(ds.get("SOPClassUID", "")) in NON_IMAGE_SOP_CLASSES:
                return False
            ds.pixel_array_options(index=0) if int(ds.get("NumberOfFrames") or 1) > 1 else None
            return ds.pixel_array.size > 0
    except Exception:
        return False


@pytest.mark.timeout(900)
def test_every_corpus_file_is_indexed_or_has_a_reason(encoder: HFEncoder, tmp_path: Path):
    folders = corpus_folders()
    if len(folders) < 3:
        pytest.skip("pydicom-data and deid-data are not installed (make install installs them)")
    totals = {"indexed": 0, "skipped": 0, "failed": 0}
    with open_index(tmp_path / "db", create=True) as (store, repository):
        for name, folder in folders.items():
            archive = open_source(folder)
            result = run_indexing(archive, store, repository, encoder, batch_size=16)
            rows = repository.get_images(repository.image_ids().tolist()).values()
            indexed_paths = {s.path for r in rows for s in r.sources if s.archive == archive.key}
            reasons = {issue.path: issue for issue in result.issues}
            for entry in archive.entries():
                if entry.path.endswith((".pyc", "__init__.py")):
                    continue
                assert (entry.path in indexed_paths) != (entry.path in reasons), f"{name}/{entry.path}"
                if entry.path in reasons:
                    assert reasons[entry.path].reason.strip(), f"{name}/{entry.path} has an empty reason"
                if pydicom_decodes(folder / entry.path):
                    assert entry.path in indexed_paths, f"pydicom decodes {name}/{entry.path}, we did not: " \
                        f"{reasons[entry.path].reason}"
            totals["indexed"] += len(indexed_paths)
            totals["skipped"] += result.skipped
            totals["failed"] += result.failed
    assert totals["indexed"] > 100
    print(f"\ncorpus: {totals}")


def test_unreadable_and_looping_files_are_recorded(encoder: HFEncoder, tmp_path: Path):
    folder = tmp_path / "a"
    folder.mkdir()
    os.symlink(folder / "gone.dcm", folder / "dangling.dcm")  # unreadable
    os.symlink(folder, folder / "loop")  # a directory loop, not followed
    (folder / "zero.dcm").write_bytes(b"")
    with open_index(tmp_path / "db", create=True) as (store, repository):
        result = run_indexing(open_source(folder), store, repository, encoder)
    reasons = {issue.path: issue for issue in result.issues}
    assert set(reasons) == {"dangling.dcm", "zero.dcm"}
    assert reasons["dangling.dcm"].kind == "failed" and "cannot read" in reasons["dangling.dcm"].reason
    assert "empty file" in reasons["zero.dcm"].reason
