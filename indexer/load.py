"""Stage 2: turn one archive entry into images ready to encode (one per selected frame), or a reason."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from core.deid import deidentify
from core.dicom import RenderOptions
from core.errors import ImageError
from core.images import LoadedImage, load_image_frames
from core.metadata import ImageMetadata
from indexer.manifest import ManifestRow
from indexer.scan import Entry


@dataclass(frozen=True)
class LoadOptions:
    render: RenderOptions = field(default_factory=RenderOptions)
    max_file_bytes: int = 2 * 1024**3
    deid_secret: str | None = None  # set: store keyed pseudonyms instead of patient IDs


@dataclass
class Prepared:
    """A decoded image (one frame of a file) with everything the writer stores about it."""

    entry: Entry
    sha256: str
    image: LoadedImage

    @property
    def pixels(self) -> np.ndarray:
        return self.image.pixels


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def merge_manifest(meta: ImageMetadata, row: ManifestRow | None) -> ImageMetadata:
    """Manifest values fill what the image itself left empty; labels, report and extras are added."""
    if row is None:
        return meta
    fills = {name: value for name, value in row.values.items() if getattr(meta, name, None) in (None, "")}
    return replace(meta, **fills, labels=list(dict.fromkeys([*meta.labels, *row.labels])),
                   report_text=meta.report_text or row.report_text, extra={**meta.extra, **row.extra})


def prepare(entry: Entry, data: bytes, source: str, row: ManifestRow | None, options: LoadOptions,
            sha256: str | None = None) -> list[Prepared]:
    """Decode `data` into one Prepared per selected frame. Raises core's ImageError family."""
    if len(data) > options.max_file_bytes:
        raise ImageError(source, f"file of {len(data)} bytes exceeds the limit of {options.max_file_bytes}")
    digest = sha256 or sha256_of(data)
    prepared = []
    for image in load_image_frames(data, source, options.render):
        image.metadata = merge_manifest(image.metadata, row)
        if options.deid_secret:
            image.metadata = deidentify(image.metadata, options.deid_secret)
        prepared.append(Prepared(entry=entry, sha256=digest, image=image))
    return prepared
