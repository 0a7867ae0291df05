"""Filters, pagination, cutoff, grouping, similar/composite/batch queries, calibrated scores, zero-shot
classification, previews and the text cache, through the API over a real index."""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.model.encoder import HFEncoder
from storage.opening import open_index
from tests.conftest import dicom_file


def embeddings(db: Path, dim: int) -> tuple[np.ndarray, np.ndarray, dict[int, dict]]:
    """ids, vectors and each image's metadata as a dict."""
    with open_index(db, read_only=True) as (_, repository):
        images = repository.get_images(repository.image_ids().tolist())
        ids, vectors = repository.get_embeddings(list(images), dim)
    return ids, vectors, {image_id: asdict(image.metadata) for image_id, image in images.items()}


@pytest.mark.parametrize("filters", [{"modality": ["MR"]}, {"modality": ["CT", "OT"], "patient_sex": "O"},
                                     {"labels": ["noise"]}, {"description": "e+1"}])
def test_filtered_text_search_equals_brute_force(client: TestClient, encoder: HFEncoder, indexed_db: Path,
                                                 filters: dict):
    ids, vectors, rows = embeddings(indexed_db, encoder.dim)

    def matches(row: dict) -> bool:
        return all([
            not filters.get("modality") or (row["modality"] or "").upper() in filters["modality"],
            not filters.get("patient_sex") or row["patient_sex"] == filters["patient_sex"],
            all(label in (row["labels"] or []) for label in filters.get("labels", [])),
            not filters.get("description") or filters["description"] in (row["study_description"] or "").lower()
            + "|" + (row["series_description"] or "").lower()])

    allowed = [i for i, image_id in enumerate(ids) if matches(rows[int(image_id)])]
    assert allowed, "the filter should match something"
    query = "brain mri"
    cosines = vectors[allowed] @ encoder.encode_texts([query])[0]
    expected = sorted(cosines.tolist(), reverse=True)[:10]
    body = client.post("/search/text", json={"query": query, "k": 10, "filters": filters}).json()
    assert [r["score"] for r in body["results"]] == pytest.approx(expected, abs=1e-5)
    assert all(matches(rows[r["image_id"]]) for r in body["results"])


@pytest.mark.parametrize("filters", [{"modality": ["US"]}, {"modality": ["CT", "OT", "MR"]}, {"modality": ["OT"]}])
def test_a_broad_filter_checked_on_the_nearest_images_equals_brute_force(client: TestClient, encoder: HFEncoder,
                                                                         indexed_db: Path, filters: dict):
    """Past post_filter_min vectors, a filter letting through a large share is checked on the nearest images
    (more of them as needed) instead of listing what it allows: the same pages, and a total counted over the
    first count_limit images, marked as a lower bound (which shows the path was taken)."""
    ids, vectors, rows = embeddings(indexed_db, encoder.dim)
    allowed = [i for i, image_id in enumerate(ids) if all(
        [not filters.get("modality") or (rows[int(image_id)]["modality"] or "").upper() in filters["modality"],
         all(label in (rows[int(image_id)]["labels"] or []) for label in filters.get("labels", []))])]
    assert len(allowed) >= 4
    cosines = vectors[allowed] @ encoder.encode_texts(["brain mri"])[0]
    expected = sorted(cosines.tolist(), reverse=True)
    service = client.app.state.services.get()
    saved = service.post_filter_min, service.count_limit
    service.post_filter_min, service.count_limit = 0, 2
    try:
        assert service.repository.filter_share(service_filters(filters)) >= 0.01
        pages = [client.post("/search/text", json={"query": "brain mri", "mode": "image", "k": 3, "offset": offset,
                                                   "filters": filters}).json() for offset in (0, 3)]
        everything = client.post("/search/text", json={"query": "brain mri", "mode": "image", "k": 1000,
                                                       "filters": filters}).json()
    finally:
        service.post_filter_min, service.count_limit = saved
    assert [r["score"] for r in pages[0]["results"] + pages[1]["results"]] == pytest.approx(expected[:6], abs=1e-5)
    assert [r["score"] for r in everything["results"]] == pytest.approx(expected, abs=1e-5)
    first = int(min(ids)) + 1  # the total counts the matches among the first count_limit ids: a lower bound
    assert everything["total"] == sum(1 for i in allowed if int(ids[i]) <= first) and everything["total_at_least"]
    exact = client.post("/search/text", json={"query": "brain mri", "mode": "image", "k": 3,
                                              "filters": filters}).json()
    assert exact["total"] == len(allowed) and not exact["total_at_least"]


def service_filters(filters: dict):
    from storage.records import ImageFilter

    return ImageFilter(modality=tuple(filters.get("modality", ())), labels=tuple(filters.get("labels", ())))


def test_pagination_min_score_and_grouping(client: TestClient):
    everything = client.post("/search/text", json={"query": "ct", "k": 10}).json()["results"]
    first = client.post("/search/text", json={"query": "ct", "k": 5}).json()["results"]
    second = client.post("/search/text", json={"query": "ct", "k": 5, "offset": 5}).json()["results"]
    assert [r["image_id"] for r in first + second] == [r["image_id"] for r in everything]
    assert [r["rank"] for r in second] == [6, 7, 8, 9, 10]
    cutoff = sorted((r["score"] for r in everything), reverse=True)[3]  # hybrid orders them by fused score
    above = client.post("/search/text", json={"query": "ct", "k": 50, "min_score": cutoff}).json()["results"]
    assert above and all(r["score"] >= cutoff for r in above) and len(above) >= 4
    grouped = client.post("/search/text", json={"query": "ct", "k": 8, "group_by": "study"}).json()["results"]
    studies = [r["metadata"].get("study_uid") or f"image:{r['image_id']}" for r in grouped]
    assert len(studies) == len(set(studies))
    by_patient = client.post("/search/text", json={"query": "ct", "k": 8, "group_by": "patient"}).json()["results"]
    patients = [r["metadata"].get("patient_id") or f"image:{r['image_id']}" for r in by_patient]
    assert len(patients) == len(set(patients))


def test_similar_composite_and_batch(client: TestClient, encoder: HFEncoder, indexed_db: Path):
    ids, vectors, _ = embeddings(indexed_db, encoder.dim)
    anchor = int(ids[0])
    similar = client.post("/search/similar", json={"image_id": anchor, "k": 5}).json()
    assert anchor not in [r["image_id"] for r in similar["results"]] and len(similar["results"]) == 5
    expected = [int(i) for i in ids[np.argsort(-(vectors @ vectors[0]), kind="stable")] if int(i) != anchor][:5]
    assert sorted(r["image_id"] for r in similar["results"]) == sorted(expected)

    parts = [{"image_id": anchor}, {"text": "pleural effusion"}, {"text": "chest tube", "weight": -0.5}]
    composite = client.post("/search", json={"parts": parts, "k": 5}).json()
    effusion, tube = encoder.encode_texts(["pleural effusion", "chest tube"])
    combined = vectors[0] + effusion - 0.5 * tube
    combined /= np.linalg.norm(combined)
    assert [r["score"] for r in composite["results"]] == pytest.approx(sorted(vectors @ combined)[::-1][:5], abs=1e-5)
    batch = client.post("/search/batch", json={"queries": [{"parts": parts, "k": 5},
                                                           {"parts": [{"text": "knee"}], "k": 3}]}).json()
    assert batch["responses"][0]["results"] == composite["results"]
    assert len(batch["responses"][1]["results"]) == 3

    missing = client.post("/search/similar", json={"image_id": 999_999})
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["body", "image_id"]
    bad = client.post("/search", json={"parts": [{"text": "x", "image_id": 1}]})
    assert bad.status_code == 422


def test_text_scores_carry_siglip_probability(client: TestClient, encoder: HFEncoder):
    result = client.post("/search/text", json={"query": "chest x-ray", "k": 3}).json()["results"][0]
    expected = 1 / (1 + math.exp(-(encoder.logit_scale * result["score"] + encoder.logit_bias)))
    assert result["probability"] == pytest.approx(expected, rel=1e-6)
    upload = dicom_file("CT_small.dcm").read_bytes()
    image = client.post("/search/image", files={"file": ("ct", upload)}).json()["results"][0]
    assert image["probability"] is None


def test_text_cache_skips_the_text_tower(client: TestClient):
    cache = client.app.state.services.get().text_cache
    client.post("/search/text", json={"query": "a rather specific query about the knee"})
    hits = cache.hits
    client.post("/search/text", json={"query": "a rather specific query about the knee"})
    assert cache.hits == hits + 1


def test_classify_with_labels_preset_and_neighbours(client: TestClient, archive_dir: Path):
    noise = (archive_dir / "photos" / "noise.png").read_bytes()
    body = client.post("/classify", files={"file": ("noise.png", noise)},
                       data={"labels": "pleural effusion, pneumothorax\nnormal", "neighbours": "3"}).json()
    labels = body["labels"]
    assert {x["label"] for x in labels} == {"pleural effusion", "pneumothorax", "normal"}
    assert sum(x["softmax"] for x in labels) == pytest.approx(1.0)
    assert all(0 <= x["probability"] <= 1 for x in labels) and 0 <= body["entropy"] <= 1
    assert labels == sorted(labels, key=lambda x: -x["probability"])
    assert body["requires_human_review"] == bool(body["review_reasons"])
    votes = {v["label"]: v for v in body["neighbour_votes"]}
    assert body["neighbours"] == 3 and votes["noise"]["count"] >= 1  # its own indexed copy is nearest
    preset = client.post("/classify", files={"file": ("noise.png", noise)}, data={"preset": "chest-xray"}).json()
    assert len(preset["labels"]) == len(client.get("/presets").json()["chest-xray"])
    unknown = client.post("/classify", files={"file": ("n.png", noise)}, data={"preset": "cardiology"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "preset"]
    empty = client.post("/classify", files={"file": ("n.png", noise)}, data={"labels": " , "})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "labels"]


def test_preview_renders_the_recorded_file(client: TestClient, archive_dir: Path):
    from core.imaging.images import load_image_file

    hit = client.post("/search/image", files={"file": ("ct", dicom_file("CT_small.dcm").read_bytes())}).json()
    image_id = hit["results"][0]["image_id"]
    response = client.get(f"/images/{image_id}/preview", params={"size": 64})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert max(picture.shape[:2]) == 64
    rendered = Image.fromarray(load_image_file(archive_dir / "dicom" / "CT_small.dcm").pixels)
    rendered.thumbnail((64, 64))
    assert np.abs(picture.astype(int) - np.asarray(rendered).astype(int)).mean() < 1
    assert client.get("/images/999999/preview").status_code == 404
    assert client.get(f"/images/{image_id}/preview", params={"size": 5000}).status_code == 422


def test_filter_errors_name_the_field(client: TestClient):
    bad_range = client.post("/search/text", json={"query": "x", "filters": {"age_min": 50, "age_max": 20}})
    assert bad_range.status_code == 422 and bad_range.json()["detail"][0]["loc"][:2] == ["body", "filters"]
    bad_form = client.post("/search/image", files={"file": ("ct", dicom_file("CT_small.dcm").read_bytes())},
                           data={"filters": "{not json"})
    assert bad_form.status_code == 422 and bad_form.json()["detail"][0]["loc"][:2] == ["body", "filters"]
    assert client.post("/search/text", json={"query": "x", "min_score": 2}).status_code == 422
