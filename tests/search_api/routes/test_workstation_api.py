"""The viewer's API on real files: windowing checked against pydicom, modality values, study and series
navigation per patient, totals and facets against brute force, classification of an indexed image,
uploads rendered, and the documentation served from local assets."""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from tests.search_api.workstation import SERIES, STUDY

PRESETS = {"lung": (-600, 1500), "mediastinum": (50, 350), "bone": (400, 1800), "brain": (40, 80), "abdomen": (60, 400)}


def reference(path, window: tuple[float, float], frame: int = 0) -> np.ndarray:
    """pydicom's modality LUT then VOI LUT with the chosen window, mapped to 8 bits over pydicom's own
    output range (the stored range through the rescale), as a viewer does."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array[frame] if int(ds.get("NumberOfFrames", 1)) > 1 else ds.pixel_array
    hu = apply_modality_lut(pixels, ds) if "RescaleSlope" in ds else apply_modality_lut(pixels, _frame_view(ds, frame))
    windowed = copy.deepcopy(ds)
    windowed.WindowCenter, windowed.WindowWidth = window
    for name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        if name in windowed:
            del windowed[name]  # the window asked for, not a per-frame one
    windowed.RescaleSlope, windowed.RescaleIntercept = _rescale(ds, frame)
    voi = apply_voi_lut(hu, windowed)
    low, high = (-(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1) if ds.PixelRepresentation else (
        0, 2**ds.BitsStored - 1)
    slope, intercept = _rescale(ds, frame)
    low, high = low * slope + intercept, high * slope + intercept
    return np.rint((voi - low) / (high - low) * 255).astype(np.uint8)


def _rescale(ds, frame: int) -> tuple[float, float]:
    view = _frame_view(ds, frame)
    return float(view.get("RescaleSlope", 1)), float(view.get("RescaleIntercept", 0))


def _frame_view(ds, frame: int) -> pydicom.Dataset:
    """The frame's Pixel Value Transformation (enhanced objects keep it per frame or shared)."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if groups:
            item = groups[frame if len(groups) > frame else 0]
            if "PixelValueTransformationSequence" in item:
                return item.PixelValueTransformationSequence[0]
    return ds


def png_pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["cache-control"] == "no-store"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))[..., 0]


@pytest.mark.parametrize("name", ["ct_small", "ct_512", "ct_enhanced"])
def test_preview_windows_equal_pydicoms_modality_and_voi_luts(workstation, workstation_client, name):
    corpus, _, ids = workstation
    if name not in ids:
        pytest.skip("pydicom-data is not installed (make install)")
    path = corpus.files[name]
    frames = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1))
    windows = {**{preset: PRESETS[preset] for preset in PRESETS}, "40/80": (40, 80), "-350.5/1200": (-350.5, 1200)}
    for frame in range(frames):
        shown = {}
        for window, pair in windows.items():
            got = png_pixels(workstation_client.get(f"/images/{ids[name]}/preview",
                                                    params={"window": window, "frame": frame, "size": 2048}))
            expected = reference(path, pair, frame)
            assert got.shape == expected.shape
            assert np.array_equal(got, expected), f"{name} frame {frame} window {window}: " \
                f"{int((got != expected).sum())} pixels differ"
            shown[window] = got
        means = {window: float(image.mean()) for window, image in shown.items()}
        assert means["lung"] > means["mediastinum"] > means["brain"] or name != "ct_small", means
        assert len({shown[w].tobytes() for w in ("lung", "bone", "brain", "40/80")}) == 3  # brain is 40/80


def test_values_are_hounsfield_units_and_colour_has_none(workstation, workstation_client):
    corpus, _, ids = workstation
    values = workstation_client.get(f"/images/{ids['ct_small']}/values", params={"size": 512}).json()
    ds = pydicom.dcmread(corpus.files["ct_small"])
    hu = apply_modality_lut(ds.pixel_array, ds)
    import base64

    grid = np.frombuffer(base64.b64decode(values["data"]), dtype="<f4").reshape(values["height"], values["width"])
    assert values["unit"] == "HU" and values["scale"] == 1.0 and grid.shape == hu.shape
    assert np.array_equal(grid, hu.astype(np.float32))
    small = workstation_client.get(f"/images/{ids['ct_small']}/values", params={"size": 32}).json()
    assert (small["width"], small["height"], small["scale"]) == (32, 32, 4.0)
    grid = np.frombuffer(base64.b64decode(small["data"]), dtype="<f4").reshape(32, 32)
    assert grid[5, 7] == hu[20, 28]  # nearest: value (x, y) is file pixel (x * scale, y * scale)
    if "mr_frames" in ids:
        frames = workstation_client.get(f"/images/{ids['mr_frames']}/values", params={"frame": 3}).json()
        assert (frames["frame"], frames["frames"]) == (3, 10)


def test_frames_of_a_multiframe_file_render_one_by_one(workstation, workstation_client):
    _, _, ids = workstation
    if "mr_frames" not in ids:
        pytest.skip("pydicom-data is not installed")
    image = workstation_client.get(f"/images/{ids['mr_frames']}").json()
    assert image["metadata"]["frames"] == 10 and image["source"]["frame_index"] == 5  # "middle" was indexed
    frames = [png_pixels(workstation_client.get(f"/images/{ids['mr_frames']}/preview", params={"frame": n}))
              for n in range(10)]
    assert len({f.tobytes() for f in frames}) == 10
    default = png_pixels(workstation_client.get(f"/images/{ids['mr_frames']}/preview"))
    assert np.array_equal(default, frames[5])
    past = workstation_client.get(f"/images/{ids['mr_frames']}/preview", params={"frame": 10})
    assert past.status_code == 422 and past.json()["detail"][0]["loc"] == ["query", "frame"]
    assert "10 frames" in past.json()["detail"][0]["msg"]


def test_a_study_lists_its_series_and_a_series_its_images_in_instance_order(workstation, workstation_client):
    _, _, ids = workstation
    study = workstation_client.get(f"/images/{ids['axial:3']}/study").json()
    assert study["study_uid"] == STUDY and study["patient_id"] == "WS-PATIENT-1"
    assert [(s["description"], s["images"]) for s in study["series"]] == [("AXIAL 5mm", 6), ("CORONAL MPR", 4)]
    assert study["images"] == 10  # the other patient's copy with the same UIDs is not in this study
    series = workstation_client.get(f"/images/{ids['coronal:2']}/series").json()
    assert [i["instance_number"] for i in series["images"]] == [1, 2, 3, 4]
    assert [i["image_id"] for i in series["images"]] == [ids[f"coronal:{n}"] for n in (1, 2, 3, 4)]
    assert series["position"] == 1 and series["series_uid"] == SERIES["coronal"][0]
    other = workstation_client.get(f"/images/{ids['other']}/series").json()
    assert [i["image_id"] for i in other["images"]] == [ids["other"]]
    single = workstation_client.get(f"/images/{ids['ct_small']}/study").json()
    assert single["images"] == 1 and single["series"][0]["first_image_id"] == ids["ct_small"]
    assert workstation_client.get("/images/999999/study").status_code == 404


def test_totals_and_facets_count_what_the_filters_and_cutoff_allow(workstation, workstation_client):
    corpus, _, ids = workstation
    everything = workstation_client.post("/search/text", json={"query": "x", "k": 5, "facets": True}).json()
    assert everything["total"] == len(set(ids.values()))
    mr = list(corpus.mr_cases)
    assert everything["facets"]["modality"]["MR"] == len(mr) + ("mr_frames" in ids)
    filtered = workstation_client.post("/search/text", json={
        "query": "x", "k": 50, "facets": True, "filters": {"modality": ["MR"], "body_part": ["BRAIN"]}}).json()
    assert filtered["total"] == len(mr) == len(filtered["results"])
    years = {str(year): sum(1 for _, _, y in mr if y == year) for year in {y for _, _, y in mr}}
    assert filtered["facets"]["year"] == dict(sorted(years.items(), key=lambda kv: (-kv[1], kv[0])))
    assert filtered["facets"]["patient_sex"] == {"F": 6, "M": 6}
    scores = [r["score"] for r in everything["results"]]
    cutoff = round(scores[2], 4)
    cut = workstation_client.post("/search/text", json={"query": "x", "k": 1000, "min_score": cutoff,
                                                        "facets": True}).json()
    assert cut["total"] == len(cut["results"]) == sum(1 for r in workstation_client.post(
        "/search/text", json={"query": "x", "k": 1000}).json()["results"] if r["score"] >= cutoff)
    assert sum(cut["facets"]["modality"].values()) <= cut["total"]
    grouped = workstation_client.post("/search/text", json={"query": "x", "k": 1000, "group_by": "study"}).json()
    assert grouped["total"] == len(grouped["results"])
    similar = workstation_client.post("/search/similar", json={"image_id": ids["axial:1"], "k": 1000}).json()
    assert similar["total"] == everything["total"] - 1 == len(similar["results"])
    page = workstation_client.post("/search/text", json={"query": "x", "k": 10, "offset": 20}).json()
    assert [r["rank"] for r in page["results"]] == list(range(21, 21 + min(10, everything["total"] - 20)))
    card = next(r for r in workstation_client.post("/search/text", json={"query": "x", "k": 1000}).json()["results"]
                if r["image_id"] == ids["axial:1"])
    assert (card["study_images"], card["study_series"]) == (10, 2)


def test_facets_and_grouped_totals_past_the_count_limit_are_marked_as_lower_bounds(workstation, workstation_client):
    corpus, _, ids = workstation
    service = workstation_client.app.state.services.get()
    exact = workstation_client.post("/search/text", json={"query": "x", "k": 5, "facets": True}).json()
    studies = workstation_client.post("/search/text", json={"query": "x", "k": 1000, "group_by": "study"}).json()
    assert exact["facets_counted"] is None and not studies["total_at_least"]
    limit, saved = 7, service.count_limit
    service.count_limit = limit
    try:
        capped = workstation_client.post("/search/text", json={"query": "x", "k": 5, "facets": True}).json()
        grouped = workstation_client.post("/search/text", json={"query": "x", "k": 5, "group_by": "study"}).json()
        mr = workstation_client.post("/search/text", json={"query": "x", "k": 5, "facets": True, "filters": {
            "modality": ["MR"], "body_part": ["BRAIN"]}}).json()
    finally:
        service.count_limit = saved
    assert capped["total"] == exact["total"] and not capped["total_at_least"]  # images are counted exactly
    assert capped["facets_counted"] == limit and sum(capped["facets"]["modality"].values()) == limit
    assert all(n <= exact["facets"]["modality"][value] for value, n in capped["facets"]["modality"].items())
    first = sorted(set(ids.values()))[:limit]
    rows = {image_id: service.repository.get_images([image_id])[image_id].metadata for image_id in first}
    assert grouped["total_at_least"] and grouped["total"] == len({m.study_uid for m in rows.values()})
    assert grouped["total"] <= studies["total"]
    assert mr["total"] == len(corpus.mr_cases) > limit and mr["facets_counted"] == limit
    assert sum(mr["facets"]["patient_sex"].values()) == limit


def test_classifying_an_indexed_image_leaves_it_out_of_its_neighbours(workstation, workstation_client):
    corpus, _, ids = workstation
    indexed = workstation_client.post(f"/images/{ids['ct_small']}/classify", json={"preset": "chest-xray"}).json()
    upload = workstation_client.post("/classify", data={"preset": "chest-xray"}, files={
        "file": ("x.dcm", corpus.files["ct_small"].read_bytes())}).json()
    assert [label["label"] for label in indexed["labels"]] == [label["label"] for label in upload["labels"]]
    for a, b in zip(indexed["labels"], upload["labels"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    assert indexed["neighbours"] == 10 and "requires_human_review" in indexed
    labels = workstation_client.post(f"/images/{ids['ct_small']}/classify", json={"labels": ["ct", "mr"]}).json()
    assert {label["label"] for label in labels["labels"]} == {"ct", "mr"}
    assert workstation_client.post(f"/images/{ids['ct_small']}/classify", json={}).status_code == 422
    assert workstation_client.post(f"/images/{ids['ct_small']}/classify",
                                   json={"preset": "nope"}).json()["detail"][0]["loc"] == ["body", "preset"]


def test_an_upload_renders_as_png_with_a_window(workstation, workstation_client):
    corpus, _, _ = workstation
    data = corpus.files["ct_small"].read_bytes()
    lung = png_pixels(workstation_client.post("/render", params={"window": "-600/1500", "size": 512},
                                              files={"file": ("q.dcm", data)}))
    assert np.array_equal(lung, reference(corpus.files["ct_small"], (-600, 1500)))
    bad = workstation_client.post("/render", files={"file": ("q.txt", b"not an image at all")})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "file"]
    assert workstation_client.post("/render", params={"window": "wide"}, files={
        "file": ("q.dcm", data)}).json()["detail"][0]["loc"] == ["query", "window"]


def test_the_viewer_link_applies_to_files_with_a_study_uid(workstation, tiny_model_dir, encoder):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from search_api.app import build_service, create_app
    from search_api.security.auth import AccessControl

    _, db, ids = workstation
    settings = Settings(db_dir=db, model=str(tiny_model_dir), viewer_url_template=(
        "https://viewer.example.org/ohif/viewer?StudyInstanceUIDs={study_uid}&archive={dicomweb_url}"))
    service = build_service(settings, encoder=encoder)
    with TestClient(create_app(settings, service=service, access=AccessControl(None, open_mode=True)),
                    base_url="http://localhost") as client:
        source = client.get(f"/images/{ids['axial:1']}").json()["source"]
        assert source["viewer_url"] == f"https://viewer.example.org/ohif/viewer?StudyInstanceUIDs={STUDY}&archive="
        assert source["url"] is None  # a file has no WADO-RS address
    service.close()


def test_docs_are_served_from_local_assets_under_a_strict_policy(workstation_client):
    for path in ("/docs", "/redoc"):
        page = workstation_client.get(path)
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy.split("style-src")[0]
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/") for a in assets), assets  # nothing from another host
        for asset in assets:
            if asset.startswith("/static/"):
                assert workstation_client.get(asset).status_code == 200
        assert "<script>" not in page.text  # no inline script
