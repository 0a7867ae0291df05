"""Stage 2: turn one archive entry into an image ready to encode, or a recorded reason why not."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from core.errors import ImageError
from core.images import LoadedImage, load_image_bytes
from core.metadata import ImageMetadata
from indexer.manifest import ManifestRow
from indexer.scan import Entry


@dataclass(frozen=True)
class LoadOptions:
    max_pixels: int = 100_000_000
    percentiles: tuple[float, float] = (0.5, 99.5)
    max_file_bytes: int = 2 * 1024**3


@dataclass
class Prepared:
    """A decoded image with everything the writer stores about it."""

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


def prepare(entry: Entry, data: bytes, source: str, row: ManifestRow | None, options: LoadOptions) -> Prepared:
    """Decode `data`. Raises core's ImageError subclasses (NotAnImageError, NoPixelDataError...)."""
    if len(data) > options.max_file_bytes:
        raise ImageError(source, f"file of {len(data)} bytes exceeds the limit of {options.max_file_bytes}")
    image = load_image_bytes(data, source, max_pixels=options.max_pixels, percentiles=options.percentiles)
    image.metadata = merge_manifest(image.metadata, row)
    return Prepared(entry=entry, sha256=sha256_of(data), image=image)
