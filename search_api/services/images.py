"""Reading back what was indexed, as a viewer does: the file recorded for an image (never one named by a
request), rendered with any window and frame, a frame's modality values (Hounsfield units under the
pointer), the original bytes, and uploads decoded like the indexer decodes. Every decode takes one of
the decode slots, so the API's decoding memory has a ceiling (docs/access.md: decompression bombs)."""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import TypeVar

import numpy as np
from PIL import Image

from core.errors import ImageError, MedsearchError
from core.imaging.dicom import RenderOptions, check_window_option, modality_values
from core.imaging.images import LoadedImage, load_image_bytes, load_image_frames
from core.sources import Source, SourceOptions, open_source
from core.sources.base import MAX_MEMBER_BYTES
from core.sources.dicomweb_locations import DicomWebConfig, is_dicomweb
from search_api.errors import FieldError, PreviewError
from search_api.services.lru import LRUCache
from storage.records import StoredImage, StoredSource

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Values:
    """A frame's modality values at (at most) a preview's size, for the value under the pointer."""

    width: int
    height: int
    scale: float  # file pixels per value
    unit: str
    frame: int
    frames: int
    data: str  # base64 of little-endian float32, row by row


def png(pixels: np.ndarray, size: int) -> bytes:
    """PNG of (H, W, 3) uint8 pixels, shrunk to at most `size` a side (never enlarged)."""
    picture = Image.fromarray(pixels)
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class ImageFiles:
    def __init__(self, render: RenderOptions, *, dicomweb: DicomWebConfig | None = None,
                 max_upload_pixels: int | None = None, decode_slots: int = 2, preview_cache_size: int = 256,
                 max_file_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.render = replace(render, reduce_to=0)  # what is shown: full resolution
        self.indexed_render = render  # what the model saw (reduced decoding where the index was made so)
        self.dicomweb = dicomweb
        self.max_file_bytes = max_file_bytes  # files, archive members and PACS instances read back
        upload_limit = min(render.max_pixels, max_upload_pixels or render.max_pixels)
        self.upload_render = replace(render, max_pixels=upload_limit, limit_setting="MEDSEARCH_MAX_UPLOAD_PIXELS")
        # decoding costs ~34 bytes per pixel at its peak: at most this many decodes (uploads, previews) at once
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        self._sources: dict[str, Source] = {}
        self._sources_lock = threading.Lock()
        self.previews: LRUCache[tuple[int, int, str, int], bytes] = LRUCache(preview_cache_size)

    def decode_upload(self, data: bytes, source: str) -> LoadedImage:
        """An uploaded image decoded exactly as the indexer does (at the model's input size where the index
        was made so), within the upload pixel limit."""
        with self._decode_slots:
            return load_image_bytes(data, source, self.upload_render)

    def render_upload(self, data: bytes, size: int, window: str | None = None) -> bytes:
        """An uploaded image as PNG, decoded as `decode_upload` does, windowed as asked (the query image
        shown above its results and beside a result)."""
        options = replace(self.upload_render, window=self._window(window), reduce_to=0)
        with self._decode_slots:
            return png(load_image_bytes(data, "uploaded file", options).pixels, size)

    def _window(self, window: str | None) -> str:
        window = window or self.render.window
        try:
            check_window_option(window, self.render.presets)
        except ValueError as exc:
            raise FieldError(422, ("query", "window"), str(exc), "invalid_window") from None
        return window

    def _source(self, key: str) -> Source:
        """The source an image was recorded from; a PACS is opened once (it keeps its connections),
        files afresh each time (a zip may have been replaced)."""
        options = SourceOptions(max_member_bytes=self.max_file_bytes, dicomweb=self.dicomweb)
        if not is_dicomweb(key):
            return open_source(key, options)
        with self._sources_lock:
            if key not in self._sources:
                self._sources[key] = open_source(key, options)
            return self._sources[key]

    def _read(self, image: StoredImage, what: Callable[[bytes, StoredSource], T]) -> T:
        source = image.sources[0]
        try:
            data = self._source(source.archive).read(source.path)
            with self._decode_slots:
                return what(data, source)
        except FieldError:
            raise
        except (OSError, MedsearchError, ImageError) as exc:
            logger.warning("image %d: its file cannot be read any more (%s)", image.id, type(exc).__name__)
            raise PreviewError(f"the file recorded for image {image.id} cannot be read or shown any more",
                               ("path", "image_id")) from exc

    @staticmethod
    def frame_of(image: StoredImage, frame: int | None, loc: tuple[str, str] = ("query", "frame")) -> int:
        """The frame asked for (default: the one indexed); 422 past the image's frames (naming `loc`)."""
        if frame is None:
            return image.sources[0].frame_index
        count = image.metadata.frames or 1
        if frame >= count:
            raise FieldError(422, loc, f"the image has {count} frame{'s' if count > 1 else ''} "
                             f"(0 to {count - 1})", "no_such_frame")
        return frame

    def preview(self, image: StoredImage, size: int, window: str | None = None, frame: int | None = None) -> bytes:
        """PNG of the image's first source, at most `size` pixels a side, rendered with `window` (a preset
        name, CENTER/WIDTH, auto, header; default: as indexed) and `frame` (default: the one indexed)."""
        window = self._window(window)
        index = self.frame_of(image, frame)

        def render(data: bytes, source: StoredSource) -> bytes:
            options = replace(self.render, window=window, frames=f"frame:{index}")
            return png(load_image_frames(data, source.path, options)[0].pixels, size)

        return self.previews.get((image.id, size, window, index), lambda: self._read(image, render))

    def as_indexed(self, image: StoredImage, frame: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """A frame's pixels as the indexer rendered them for the model, and the (rows, columns) of the
        frame as the preview shows it (the file's own size)."""
        index = self.frame_of(image, frame)

        def read(data: bytes, source: StoredSource) -> tuple[np.ndarray, tuple[int, int]]:
            loaded = load_image_frames(data, source.path, replace(self.indexed_render, frames=f"frame:{index}"))[0]
            meta = loaded.metadata
            if loaded.kind == "dicom" and meta.rows and meta.columns:
                return loaded.pixels, (int(meta.rows), int(meta.columns))
            if self.indexed_render.reduce_to == 0:
                return loaded.pixels, (int(loaded.pixels.shape[0]), int(loaded.pixels.shape[1]))
            shown = load_image_frames(data, source.path, replace(self.render, frames=f"frame:{index}"))[0]
            # a raster: its size as shown (EXIF orientation too)
            return loaded.pixels, (int(shown.pixels.shape[0]), int(shown.pixels.shape[1]))

        return self._read(image, read)

    def values(self, image: StoredImage, size: int, frame: int | None = None) -> Values:
        """The frame's modality values, downsampled (nearest) to at most `size` a side."""
        index = self.frame_of(image, frame)

        def read(data: bytes, source: StoredSource) -> Values:
            try:
                found = modality_values(data, source.path, self.render, index)
            except ImageError as exc:
                raise FieldError(422, ("path", "image_id"), exc.reason, "no_modality_values") from None
            rows, columns = found.values.shape
            scale = max(1.0, max(rows, columns) / size)
            height, width = max(1, round(rows / scale)), max(1, round(columns / scale))
            picked = found.values[(np.arange(height) * scale).astype(int)][:, (np.arange(width) * scale).astype(int)]
            raw = np.ascontiguousarray(picked, dtype="<f4").tobytes()
            return Values(width, height, scale, found.unit, found.frame, found.frames,
                          base64.b64encode(raw).decode())

        return self._read(image, read)

    def original(self, image: StoredImage, index: int) -> tuple[bytes, str]:
        """The bytes of the image's `index`-th source as stored, and a file name for them."""
        if not 0 <= index < len(image.sources):
            raise FieldError(422, ("query", "source"), f"the image has {len(image.sources)} sources (0 to "
                             f"{len(image.sources) - 1})", "no_such_source")
        source = image.sources[index]
        try:
            data = self._source(source.archive).read(source.path)
        except (OSError, MedsearchError) as exc:
            raise PreviewError(f"the file recorded for image {image.id} cannot be read any more",
                               ("path", "image_id")) from exc
        name = PurePosixPath(source.path).name or "image"
        return data, name if "." in name else f"{name}.dcm"
