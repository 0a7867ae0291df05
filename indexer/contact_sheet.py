"""A contact sheet: every image of an archive rendered exactly as the indexer sends it to the model,
tiled into one PNG with its path and window, for a person to look at."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from core.errors import ImageError
from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_frames
from core.sources import Source

logger = logging.getLogger(__name__)


@dataclass
class SheetResult:
    path: Path
    rendered: int
    not_rendered: int


def write_contact_sheet(archive: Source, out: Path, options: RenderOptions | None = None, tile: int = 160,
                        columns: int = 8, limit: int = 400) -> SheetResult:
    """Render up to `limit` images of `archive` into a grid PNG at `out`."""
    options = options or RenderOptions()
    tiles: list[tuple[Image.Image, str]] = []
    failed = 0
    for entry, data in archive.iter_read():
        if len(tiles) >= limit:
            break
        if data is None or isinstance(data, OSError):
            failed += 1
            continue
        try:
            images = load_image_frames(data, entry.path, options)
        except ImageError:
            failed += 1
            continue
        for image in images:
            thumb = Image.fromarray(image.pixels)
            thumb.thumbnail((tile, tile - 28))
            window = image.metadata.window or image.kind
            frame = f" f{image.metadata.frame_index}" if (image.metadata.frames or 1) > 1 else ""
            tiles.append((thumb, f"{Path(entry.path).name[:26]}{frame}\n{window[:30]}"))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * tile), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i, (thumb, caption) in enumerate(tiles):
        x, y = (i % columns) * tile, (i // columns) * tile
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + 2))
        draw.multiline_text((x + 3, y + tile - 26), caption, fill=(255, 255, 120), spacing=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return SheetResult(path=out, rendered=len(tiles), not_rendered=failed)
