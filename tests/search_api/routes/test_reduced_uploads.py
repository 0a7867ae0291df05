"""An index made with decoding at the model's input size: queries are decoded as its images were, while
what is shown stays at full resolution."""

from __future__ import annotations

import io

from PIL import Image

from core.imaging.dicom import RenderOptions
from search_api.services.images import ImageFiles
from tests.core.model.test_model_input import large_files


def test_uploads_are_decoded_at_the_model_size_and_shown_at_full_resolution():
    path = next(p for p in large_files() if p.name.startswith("MR2"))  # a real 1024x1024 MR
    files = ImageFiles(RenderOptions(reduce_to=256))
    data = path.read_bytes()
    assert files.decode_upload(data, path.name).pixels.shape[:2] == (256, 256)  # as the indexer decodes it
    shown = Image.open(io.BytesIO(files.render_upload(data, 1024)))
    assert shown.size == (1024, 1024)  # the picture beside the results is not the reduced one
