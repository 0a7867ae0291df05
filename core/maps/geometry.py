"""Where a relevance map's patch grid lies on the original image, and its PNG overlay.

The model saw the image as indexed: decoded (at reduced resolution where the index was made so), then
resized by the model's processor (SigLIP: a fixed height x width resize; CLIP: shortest edge, then a
centre crop). `placement` inverts that chain: grid cell (r, c) covers the file's pixels
x in [x0 + c * cell_width, x0 + (c + 1) * cell_width), y likewise. `overlay_png` draws the map at the
size the preview route draws the image (Pillow's thumbnail rule), so the two line up pixel for pixel.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from core.model.inputs import ModelInput


@dataclass(frozen=True)
class Placement:
    """The grid on the file's pixels: cell (r, c) covers x in [x0 + c * cell_width, x0 + (c + 1) *
    cell_width) and y in [y0 + r * cell_height, ...) of the original frame of width x height."""

    rows: int
    cols: int
    x0: float
    y0: float
    cell_width: float
    cell_height: float
    width: int  # the file frame's columns
    height: int  # and rows

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def cell_of(self, x: float, y: float) -> tuple[int, int] | None:
        """The (row, col) covering file pixel (x, y), or None outside the grid (cropped away)."""
        col, row = math.floor((x - self.x0) / self.cell_width), math.floor((y - self.y0) / self.cell_height)
        return (row, col) if 0 <= row < self.rows and 0 <= col < self.cols else None

    def centre_of(self, row: int, col: int) -> tuple[float, float]:
        return self.x0 + (col + 0.5) * self.cell_width, self.y0 + (row + 0.5) * self.cell_height


def resized_size(model_input: ModelInput, width: int, height: int) -> tuple[int, int, int, int]:
    """The processor's resize of a (width, height) image before any crop, and the crop's left, top."""
    processor = model_input.processor
    if processor is None:  # a fixed resize: the whole image, stretched
        return model_input.width, model_input.height, 0, 0
    size = getattr(processor, "size", None) or {}
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    if shortest:
        short, long = (width, height) if width <= height else (height, width)
        other = int(shortest * long / short)
        new_w, new_h = (shortest, other) if width <= height else (other, shortest)
    else:
        new_w, new_h = model_input.width, model_input.height
    return new_w, new_h, (new_w - model_input.width) // 2, (new_h - model_input.height) // 2


def placement(model_input: ModelInput, patch: int, rendered: tuple[int, int], file: tuple[int, int]) -> Placement:
    """The grid of a model with `patch`-pixel patches on the file, for an image the model saw rendered
    at `rendered` = (height, width) pixels from a frame of `file` = (rows, columns) pixels."""
    rendered_h, rendered_w = rendered
    file_h, file_w = file
    new_w, new_h, left, top = resized_size(model_input, rendered_w, rendered_h)
    per_x, per_y = file_w / new_w, file_h / new_h  # file pixels per resized pixel
    return Placement(model_input.height // patch, model_input.width // patch, left * per_x, top * per_y,
                     patch * per_x, patch * per_y, file_w, file_h)


def thumbnail_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The (width, height) Pillow's `thumbnail((size, size))` gives an image of (width, height)."""
    if size >= width and size >= height:
        return width, height
    aspect = width / height

    def round_aspect(number: float, key: object) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)  # type: ignore[call-overload]

    x = y = size
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _axis(count: int, cells: int, start: float, cell: float, file_size: int) -> tuple[np.ndarray, ...]:
    """Per output pixel along one axis: the two neighbouring cells, the weight of the second, inside."""
    centres = (np.arange(count) + 0.5) * file_size / count  # file coordinate of each output pixel
    position = (centres - start) / cell - 0.5
    inside = (centres >= start) & (centres < start + cells * cell)
    position = np.clip(position, 0, cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, cells - 1)
    return low, high, (position - low).astype(np.float32), inside


def overlay_pixels(values: np.ndarray, where: Placement, size: int) -> np.ndarray:
    """(h, w, 4) uint8 RGBA: the map bilinear between cell centres, scaled from its least relevant
    patch (transparent) to its most relevant (opaque white-yellow), at the preview's size for `size`."""
    out_w, out_h = thumbnail_size(where.width, where.height, size)
    ylow, yhigh, yw, yin = _axis(out_h, where.rows, where.y0, where.cell_height, where.height)
    xlow, xhigh, xw, xin = _axis(out_w, where.cols, where.x0, where.cell_width, where.width)
    grid = np.asarray(values, dtype=np.float32)
    by_row = grid[ylow] * (1 - yw)[:, None] + grid[yhigh] * yw[:, None]  # (out_h, cols)
    smooth = by_row[:, xlow] * (1 - xw)[None, :] + by_row[:, xhigh] * xw[None, :]
    low, top = float(grid.min()), float(grid.max())
    level = np.clip((smooth - low) / (top - low), 0, 1) if top > low else np.zeros_like(smooth)
    level *= (yin[:, None] & xin[None, :])
    rgba = np.empty((out_h, out_w, 4), dtype=np.uint8)  # a "hot" ramp: red, then yellow, then white
    rgba[..., 0] = np.clip(level * 3, 0, 1) * 255
    rgba[..., 1] = np.clip(level * 3 - 1, 0, 1) * 255
    rgba[..., 2] = np.clip(level * 3 - 2, 0, 1) * 255
    rgba[..., 3] = level ** 2 * 220  # the peaks stand out; the rest stays see-through
    return rgba


def overlay_png(values: np.ndarray, where: Placement, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(overlay_pixels(values, where, size), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()
