"""Work units and shards of a distributed run.

A unit is a few dozen files of one source that need reading. Its id is a hash of what determines its
result: the source, the configuration (model fingerprint, rendering, limits, de-identification key
check), and each file's path, size, time, known hash and manifest row; so the same files under the
same configuration always make the same unit, and a unit committed once is never committed twice.

A shard is a finished unit, written by the actor that encoded it: the vectors (float32 npy) and, in
JSON, every file's verdict and frames with their metadata. It is written to a temp name and renamed
to `<unit id>.npz` (storage.layout.write_atomically), so a shard is whole or absent, and a retried
writer replaces it with the same content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from core.imaging.metadata import ImageMetadata
from core.model.encoder import ModelFingerprint
from core.sources import Entry
from indexer.pipeline.load import Frame, LoadOptions, Outcome
from indexer.pipeline.manifest import MANIFEST_NAME, ManifestRow
from indexer.pipeline.scan import Listing, unchanged
from storage.layout import write_atomically

logger = logging.getLogger(__name__)

SHARD_VERSION = 1


@dataclass(frozen=True)
class UnitFile:
    entry: Entry
    known_sha256: str | None
    manifest_row: ManifestRow | None


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str
    source: str  # the source's key, which also opens it (core.sources.open_source)
    files: tuple[UnitFile, ...]


def _json(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _json(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): _json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    return value


def config_digest(fingerprint: ModelFingerprint, load: LoadOptions, deid_check: str) -> str:
    """What, besides the files, decides a unit's result."""
    render = load.render
    described = {"model": fingerprint.key, "window": render.window, "presets": sorted(render.presets.items()),
                 "percentiles": render.percentiles, "frames": render.frames, "max_pixels": render.max_pixels,
                 "max_file_bytes": load.max_file_bytes, "deid": deid_check,
                 "keep_columns": sorted(load.deid_keep_columns), "keep_reports": load.deid_keep_reports}
    return hashlib.sha256(json.dumps(_json(described), sort_keys=True).encode()).hexdigest()


def plan_units(source_key: str, listing: Listing, manifest: dict[str, ManifestRow], digest: str,
               max_file_bytes: int, files_per_unit: int) -> list[WorkUnit]:
    """The entries that need reading, in listing order, as units of `files_per_unit`."""
    pending = [entry for entry in listing.entries if entry.path != MANIFEST_NAME
               and not unchanged(listing.known.get(entry.path), entry) and entry.size <= max_file_bytes]
    units = []
    for start in range(0, len(pending), files_per_unit):
        files = []
        for entry in pending[start:start + files_per_unit]:
            state = listing.known.get(entry.path)
            files.append(UnitFile(entry, state.file_sha256 if state else None, manifest.get(entry.path)))
        identity = json.dumps([source_key, digest, [_json(file) for file in files]], sort_keys=True)
        units.append(WorkUnit(hashlib.sha256(identity.encode()).hexdigest(), source_key, tuple(files)))
    return units


def write_shard(folder: Path, unit: WorkUnit, digest: str, fingerprint: ModelFingerprint, outcomes: Sequence[Outcome],
                vectors: np.ndarray) -> Path:
    """Write-then-rename `<unit id>.npz`: vectors in frame order, every outcome without its pixels."""
    described = {"version": SHARD_VERSION, "unit_id": unit.unit_id, "source": unit.source, "config": digest,
                 "fingerprint": fingerprint.to_dict(), "files": [{
                     "entry": _json(outcome.entry), "status": outcome.status, "sha256": outcome.sha256,
                     "reason": outcome.reason, "frames": [{"pixel_sha256": frame.pixel_sha256, "kind": frame.kind,
                                                           "metadata": _json(frame.metadata)}
                                                          for frame in outcome.frames]} for outcome in outcomes]}
    buffer = io.BytesIO()
    np.savez(buffer, vectors=np.ascontiguousarray(vectors, dtype=np.float32),
             meta=np.frombuffer(json.dumps(described).encode(), dtype=np.uint8))
    path = folder / f"{unit.unit_id}.npz"
    write_atomically(path, buffer.getvalue())
    return path


@dataclass
class Shard:
    unit_id: str
    source: str
    config: str
    fingerprint: dict[str, Any]
    outcomes: list[Outcome]
    frames: int


def _metadata(values: dict[str, Any]) -> ImageMetadata:
    if values.get("study_date"):
        values = {**values, "study_date": date.fromisoformat(values["study_date"])}
    return ImageMetadata(**values)


def read_shard(path: Path) -> Shard:
    """The outcomes of a shard, each frame with its vector. ValueError for a shard that is not one."""
    with np.load(path, allow_pickle=False) as data:
        vectors, described = data["vectors"], json.loads(data["meta"].tobytes())
    if described.get("version") != SHARD_VERSION:
        raise ValueError(f"{path}: shard version {described.get('version')}, expected {SHARD_VERSION}")
    outcomes, row = [], 0
    for item in described["files"]:
        frames = []
        for frame in item["frames"]:
            frames.append(Frame(frame["pixel_sha256"], np.empty(0, dtype=np.float32), _metadata(frame["metadata"]),
                                frame["kind"], vector=vectors[row]))
            row += 1
        outcomes.append(Outcome(Entry(**item["entry"]), item["status"], item["sha256"], item["reason"], frames))
    if row != len(vectors):
        raise ValueError(f"{path}: {len(vectors)} vectors for {row} frames")
    return Shard(described["unit_id"], described["source"], described["config"], described["fingerprint"], outcomes,
                 row)


def leftover_shards(folder: Path, source_key: str) -> Iterable[tuple[Path, Shard | None]]:
    """Shards of `source_key` in `folder` (a killed run's), oldest first; None for one that cannot be read."""
    for path in sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime):
        try:
            shard = read_shard(path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("shard %s cannot be read (%s): it is set aside and its files are read again", path.name,
                           exc)
            yield path, None
            continue
        if shard.source == source_key:
            yield path, shard
