"""POST /images/{id}/explain over the session's real index: the map's numbers, its placement on the
file, the overlay the size of the preview, the three query kinds, caching, refusals and errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.model.encoder import HFEncoder
from search_api.errors import FieldError
from search_api.services.explaining import ExplainQuery, Explanations
from tests.conftest import dicom_file


def indexed(client: TestClient) -> list[dict]:
    return client.post("/search/filter", json={"k": 100}).json()["results"]


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("size", [128, 512])
def test_every_images_map_lies_on_its_file_and_its_overlay_on_its_preview(client: TestClient, size: int):
    results = indexed(client)
    assert len(results) >= 5
    for result in results:
        image_id = result["image_id"]
        response = client.post(f"/images/{image_id}/explain", data={"text": "chest x-ray", "size": size})
        assert response.status_code == 200, response.text
        body = response.json()
        meta = client.get(f"/images/{image_id}").json()["metadata"]
        where = body["placement"]
        assert (where["rows"], where["cols"]) == (len(body["values"]), len(body["values"][0])) == (4, 4)
        assert (where["width"], where["height"]) == (meta["columns"], meta["rows"])
        assert where["cell_width"] * where["cols"] == pytest.approx(meta["columns"])  # SigLIP: no crop
        preview = client.get(f"/images/{image_id}/preview", params={"size": size, "frame": body["frame"]})
        overlay = base64.b64decode(body["overlay_png"])
        assert png_size(overlay) == png_size(preview.content) == tuple(body["overlay_size"])
        assert Image.open(io.BytesIO(overlay)).mode == "RGBA"


def test_the_score_is_the_searchs_and_a_repeat_is_cached(client: TestClient, encoder: HFEncoder):
    image_id = indexed(client)[0]["image_id"]
    first = client.post(f"/images/{image_id}/explain", data={"text": "right pleural effusion"}).json()
    found = client.post("/search/text", json={"query": "right pleural effusion", "k": 100, "mode": "image"}).json()
    score = next(r["score"] for r in found["results"] if r["image_id"] == image_id)
    assert first["score"] == pytest.approx(score, abs=1e-4)  # the map explains the score the search ranked by
    assert first["cached"] is False and first["method"] == "gradient" and first["passes"] == 1
    again = client.post(f"/images/{image_id}/explain", data={"text": "right pleural effusion"}).json()
    assert again["cached"] is True and again["values"] == first["values"]
    png = client.post(f"/images/{image_id}/explain", data={"text": "right pleural effusion", "format": "png"})
    assert png.headers["content-type"] == "image/png" and png.headers["cache-control"] == "no-store"
    assert png.content == base64.b64decode(first["overlay_png"])


def test_image_and_upload_queries_and_occlusion(client: TestClient):
    ids = [r["image_id"] for r in indexed(client)]
    by_id = client.post(f"/images/{ids[0]}/explain", data={"query_image_id": ids[1], "method": "occlusion"}).json()
    assert by_id["query"] == "image" and by_id["method"] == "occlusion" and by_id["window"] == 1
    assert by_id["passes"] == 17  # 4 x 4 windows and the whole image
    upload = dicom_file("CT_small.dcm").read_bytes()
    by_upload = client.post(f"/images/{ids[0]}/explain", files={"file": ("q.dcm", upload)}).json()
    assert by_upload["query"] == "upload" and np.isfinite(np.array(by_upload["values"])).all()
    self_map = client.post(f"/images/{ids[0]}/explain", data={"query_image_id": ids[0]}).json()
    assert self_map["score"] == pytest.approx(1.0, abs=1e-4)  # the image against its own stored vector


@pytest.mark.parametrize(("data", "files", "status", "kind"), [
    ({}, None, 422, "one_query"),
    ({"text": "x", "query_image_id": 0}, None, 422, "one_query"),
    ({"text": "x", "method": "saliency"}, None, 422, "literal_error"),
    ({"text": "x", "method": "occlusion", "window": 9}, None, 422, "invalid_window"),
    ({"text": "x", "frame": 50}, None, 422, "no_such_frame"),
    ({"query_image_id": 999_999}, None, 404, None),
    ({}, {"file": ("notes.txt", b"not an image at all")}, 422, "not_an_image"),
])
def test_bad_requests_name_the_field(client: TestClient, data, files, status, kind):
    image_id = indexed(client)[0]["image_id"]
    response = client.post(f"/images/{image_id}/explain", data=data, files=files)
    assert response.status_code == status, response.text
    if kind:
        assert response.json()["detail"][0]["type"] == kind
    assert client.post("/images/999999/explain", data={"text": "x"}).status_code == 404


def test_work_that_would_not_finish_in_the_timeout_is_refused_before_it_starts(client: TestClient,
                                                                              encoder: HFEncoder):
    service = client.app.state.services.get()
    image = service.require_image(indexed(client)[0]["image_id"])
    slow = Explanations(encoder, service.files, timeout_s=1e-6)
    query = ExplainQuery("text", "x", encoder.encode_texts(["x"])[0])
    with pytest.raises(FieldError) as refused:
        slow.explain(image, query, "occlusion")
    assert refused.value.kind == "explanation_too_slow" and "MEDSEARCH_REQUEST_TIMEOUT_S" in str(refused.value)
    assert slow.cache.misses == 1 and len(slow.cache._items) == 0  # nothing half-made was kept


def test_reduced_index_maps_lie_on_the_full_file(tmp_path: Path, encoder: HFEncoder):
    """An index decoded at reduced resolution: the map is computed on what the model saw, placed on the
    file's full-size pixels (the preview's)."""
    from core.imaging.dicom import RenderOptions
    from search_api.services.images import ImageFiles
    from storage.opening import open_index
    from tests.conftest import index_folder

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (700, 500), dtype=np.uint8)).save(folder / "big.png")
    db = tmp_path / "db"
    index_folder(folder, db, encoder, batch_size=2)
    with open_index(db, read_only=True) as (_store, repository):
        image = repository.get_images(repository.image_ids().tolist())[int(repository.image_ids()[0])]
    files = ImageFiles(RenderOptions(reduce_to=encoder.decode_side))
    pixels, shown = files.as_indexed(image)
    assert pixels.shape[0] < 700 and shown == (700, 500)
    found = Explanations(encoder, files, timeout_s=60).explain(image, ExplainQuery("text", "x", encoder.encode_texts(
        ["x"])[0]), "gradient")
    assert (found.placement.width, found.placement.height) == (500, 700)
    assert found.placement.cell_height * found.placement.rows == pytest.approx(700)
