"""The radiologist's workstation in a real Chromium, driven as a user drives it: window presets and a
custom window (pixels checked against pydicom), the HU under the pointer, dragging the window, zoom,
frames and series scrolling, the study view, classification, comparison with the query, paging,
facets, a shared link, CSV export, downloads, keyboard-only use, and /docs without any external request."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.security.auth import AccessControl
from tests.search_api.browser import browser_page, screenshot, serve
from tests.search_api.routes.test_workstation_api import reference

MEAN = """(selector) => { const img = document.querySelector(selector);
  const canvas = document.createElement("canvas"); canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const g = canvas.getContext("2d"); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, canvas.width, canvas.height).data; let s = 0;
  for (let i = 0; i < d.length; i += 4) s += d[i]; return [s / (d.length / 4), canvas.width, canvas.height]; }"""


@pytest.fixture(scope="module")
def site(browser, workstation_settings: Settings, encoder: HFEncoder) -> Iterator[str]:
    yield from serve(workstation_settings, encoder, AccessControl(None, open_mode=True))


@pytest.fixture
def page(browser, site: str) -> Iterator[object]:
    yield from browser_page(browser, site, accept_downloads=True)


def shown(page, expected: str, viewer: str = "#viewer-main") -> None:
    page.wait_for_function(f"() => document.querySelector('{viewer}').dataset.shown === {expected!r}")


def open_case(page, site: str, image_id: int, query: str = "x") -> None:
    page.goto(f"{site}/?q={query}&case={image_id}")
    page.wait_for_selector("#case", state="visible")
    page.wait_for_function("(id) => (document.querySelector('#viewer-main').dataset.shown || '')"
                           ".startsWith(id + ':')", arg=str(image_id))


def png_mean(site: str, path: str) -> float:
    return float(np.asarray(Image.open(io.BytesIO(httpx.get(site + path).content)).convert("RGB"))[..., 0].mean())


def test_window_presets_custom_window_drag_zoom_and_hu_under_the_pointer(page, site, workstation, tmp_path):
    corpus, _, ids = workstation
    image, path = ids["ct_small"], corpus.files["ct_small"]
    open_case(page, site, image)
    for preset, pair in (("lung", (-600, 1500)), ("bone", (400, 1800))):
        page.click(f"#viewer-main .presets button[data-window={preset}]")
        shown(page, f"{image}:0:{preset}")
        mean, width, height = page.evaluate(MEAN, "#viewer-main img.view")
        assert (width, height) == (128, 128) and mean == pytest.approx(float(reference(path, pair).mean()), abs=1e-9)
        if preset == "lung":
            screenshot(page, "viewer-ct-lung-window.png", tmp_path, full_page=False)
    page.fill("#viewer-main .wc", "40")
    page.fill("#viewer-main .ww", "80")
    page.click("#viewer-main .apply")
    shown(page, f"{image}:0:40/80")
    assert page.evaluate(MEAN, "#viewer-main img.view")[0] == pytest.approx(float(reference(path, (40, 80)).mean()))
    assert page.get_attribute("#viewer-main .presets button[data-window=brain]", "aria-pressed") == "false"
    box = page.locator("#viewer-main img.view").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 70.5 / 128, box["y"] + box["height"] * 30.5 / 128)
    page.wait_for_function("() => document.querySelector('#viewer-main .readout').textContent.startsWith('HU')")
    hu = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
    assert page.inner_text("#viewer-main .readout") == f"HU {int(hu[30, 70])} at (70, 30)"
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 64, box["y"] + box["height"] / 2 + 32, steps=4)
    page.mouse.up()
    shown(page, f"{image}:0:{40 + round(32 * 80 / 256)}/{80 + round(64 * 80 / 256)}")  # down = centre, right = width
    fit = page.locator("#viewer-main img.view").bounding_box()["width"]
    page.click("#viewer-main .zoom-in")
    assert page.locator("#viewer-main img.view").bounding_box()["width"] == pytest.approx(fit * 1.5, abs=2)
    screenshot(page, "viewer-ct-custom-window-zoomed.png", tmp_path, full_page=False)


def test_frames_of_a_multiframe_image_scroll_with_keys_and_slider(page, site, workstation, tmp_path):
    _, _, ids = workstation
    if "mr_frames" not in ids:
        pytest.skip("pydicom-data is not installed")
    image = ids["mr_frames"]
    open_case(page, site, image)
    shown(page, f"{image}:5:")
    assert page.is_visible("#viewer-main .frames") and page.inner_text("#viewer-main .frame-label") == "6 / 10"
    page.focus("#viewer-main .stage")
    page.keyboard.press("ArrowDown")
    shown(page, f"{image}:6:")
    assert page.evaluate(MEAN, "#viewer-main img.view")[0] == pytest.approx(
        png_mean(site, f"/images/{image}/preview?size=1024&frame=6"))
    page.locator("#viewer-main .frame").fill("0")
    shown(page, f"{image}:0:")
    assert page.inner_text("#viewer-main .frame-label") == "1 / 10"
    means = set()
    for frame in range(1, 4):
        page.mouse.move(*_centre(page, "#viewer-main .stage"))
        page.mouse.wheel(0, 100)
        shown(page, f"{image}:{frame}:")
        means.add(page.evaluate(MEAN, "#viewer-main img.view")[0])
    assert len(means) == 3
    screenshot(page, "viewer-mr-frames.png", tmp_path, full_page=False)


def _centre(page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_series_scrolls_in_instance_order_and_the_study_view_opens_from_a_result(page, site, workstation, tmp_path):
    _, _, ids = workstation
    open_case(page, site, ids["axial:3"])
    page.wait_for_function("() => document.querySelector('#viewer-main .series-label').textContent !== ''")
    assert page.inner_text("#viewer-main .series-label") == "3 / 6 (instance 3)"
    page.focus("#viewer-main .stage")
    page.keyboard.press("ArrowDown")
    shown(page, f"{ids['axial:4']}:0:")
    assert page.inner_text("#viewer-main .series-label") == "4 / 6 (instance 4)"
    page.keyboard.press("Escape")
    page.wait_for_selector("#case", state="hidden")
    page.goto(f"{site}/?q=x&k=100")
    card = page.locator(f".result[data-image-id='{ids['axial:1']}']")
    assert "Study: 10 images in 2 series" in card.inner_text()
    card.locator(".study-link").click()
    page.wait_for_selector("#study", state="visible")
    page.wait_for_function("() => document.querySelectorAll('#series-images .result').length === 6")
    series = page.locator("#series-list .series")
    assert [series.nth(n).inner_text().split("\n") for n in range(series.count())] == [
        ["AXIAL 5mm", "CT · 6 images"], ["CORONAL MPR", "CT · 4 images"]]
    assert "10 images in 2 series" in page.inner_text("#study-info")
    series.nth(1).click()
    page.wait_for_function("() => document.querySelectorAll('#series-images .result').length === 4")
    thumbnails = page.locator("#series-images .result")
    assert [thumbnails.nth(n).inner_text() for n in range(4)] == [f"Instance {n}" for n in range(1, 5)]
    page.wait_for_function("() => [...document.querySelectorAll('#series-images img')].every(i => i.naturalWidth > 0)")
    screenshot(page, "study-view.png", tmp_path, full_page=False)
    thumbnails.nth(1).click()
    page.wait_for_selector("#study", state="hidden")
    page.wait_for_selector("#case", state="visible")
    assert page.get_attribute("#case", "data-image-id") == str(ids["coronal:2"])


def test_classify_from_the_case_view_and_download_the_original(page, site, workstation, tmp_path):
    corpus, _, ids = workstation
    open_case(page, site, ids["ct_small"])
    page.select_option("#classify-preset", "chest-xray")
    page.click("#classify-go")
    page.wait_for_selector("#classification table.labels")
    rows = page.locator("#classification table.labels tr")
    assert rows.count() == 14  # a header and the preset's 13 labels
    expected = httpx.post(f"{site}/images/{ids['ct_small']}/classify", json={"preset": "chest-xray"}).json()
    assert rows.nth(1).inner_text().split("\t")[0] == expected["labels"][0]["label"]
    text = page.inner_text("#classification")
    assert f"Entropy {expected['entropy']:.2f}" in text and "Labels of the 10 nearest cases" in text
    assert ("Requires human review" in text) == expected["requires_human_review"]
    screenshot(page, "case-classified.png", tmp_path, full_page=False)
    with page.expect_download() as download:
        page.click("#download")
    assert Path(download.value.path()).read_bytes() == corpus.files["ct_small"].read_bytes()
    assert download.value.suggested_filename == "CT_small.dcm"


def test_pages_facets_shared_link_and_csv_export(page, browser, site, workstation, tmp_path):
    _, _, ids = workstation
    total = len(set(ids.values()))
    page.goto(f"{site}/?q=x&k=10")
    page.wait_for_selector(".result")
    assert page.inner_text("#summary") == f"{total} matches" and page.inner_text("#page") == "Page 1 of 3"
    for first in (11, 21):
        page.click("#next")
        page.wait_for_function(f"() => document.querySelector('.result .score').textContent.startsWith('#{first} ')")
    assert page.locator(".result").count() == total - 20 and page.is_disabled("#next")
    page.click("#prev")
    page.wait_for_function("() => document.querySelector('.result .score').textContent.startsWith('#11 ')")
    facet = page.locator("#facets [data-facet=modality] button[data-value=MR]")
    mr = int(re.search(r"\((\d+)\)", facet.inner_text()).group(1))
    facet.click()
    page.wait_for_function(f"() => document.querySelector('#summary').textContent === '{mr} matches'")
    assert page.input_value("#modality") == "MR" and "page=" not in page.url and "modality=MR" in page.url
    page.click("#next")
    page.wait_for_function("() => document.querySelector('.result .score').textContent.startsWith('#11 ')")
    shared = page.url
    ids_here = page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.imageId)")
    screenshot(page, "results-page-2-facets.png", tmp_path)
    for other in browser_page(browser, shared):
        other.wait_for_selector(".result")
        assert other.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.imageId)") == ids_here
        assert other.input_value("#query") == "x" and other.input_value("#modality") == "MR"
    with page.expect_download() as download:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert download.value.suggested_filename == "medsearch-results.csv"
    assert len(rows) == mr and {row["modality"] for row in rows} == {"MR"}
    assert [int(row["rank"]) for row in rows] == list(range(1, mr + 1))


def test_keyboard_only_from_search_to_case_and_back(page, site):
    for _ in range(30):
        if page.evaluate("() => document.activeElement.id") == "query":
            break
        page.keyboard.press("Tab")
    page.keyboard.type("chest ct")
    page.keyboard.press("Enter")
    page.wait_for_selector(".result")
    for _ in range(40):
        if page.evaluate("() => document.activeElement.classList.contains('result')"):
            break
        page.keyboard.press("Tab")
    first = page.evaluate("() => document.activeElement.dataset.imageId")
    page.keyboard.press("ArrowRight")
    second = page.evaluate("() => document.activeElement.dataset.imageId")
    assert second != first and second == page.locator(".result").nth(1).get_attribute("data-image-id")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_selector("#case", state="visible")
    assert page.get_attribute("#case", "data-image-id") == second
    assert page.evaluate("() => document.activeElement.id") == "close"
    page.keyboard.press("Escape")
    page.wait_for_selector("#case", state="hidden")
    assert page.evaluate("() => document.activeElement.dataset.imageId") == second


def test_the_uploaded_query_is_shown_compared_and_errors_replace_results(page, site, workstation, tmp_path):
    corpus, _, _ = workstation
    page.fill("#query", "a text that is not the query any more")
    page.set_input_files("#file", str(corpus.files["ct_small"]))
    page.wait_for_selector(".result")
    page.wait_for_function("() => document.querySelector('#query-preview').naturalWidth > 0")
    assert page.is_visible("#query-image") and page.input_value("#query") == ""
    assert "CT_small.dcm" in page.inner_text("#query-name")
    page.locator(".result").first.click()
    page.wait_for_selector("#case", state="visible")
    page.click("#compare")
    shown(page, "upload:0:", "#viewer-query")
    page.click("#viewer-main .presets button[data-window=lung]")
    shown(page, "upload:0:lung", "#viewer-query")
    screenshot(page, "compare-with-query.png", tmp_path, full_page=False)
    page.click("#close")
    page.click("#classify-upload")
    page.wait_for_selector("#upload-classification table.labels")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image, words only " * 8)
    page.set_input_files("#file", str(bad))
    page.wait_for_function("() => document.querySelector('#status').className === 'error'")
    assert page.locator("#results .result").count() == 0 and page.is_hidden("#toolbar")
    assert "notes.txt" in page.inner_text("#status")


def test_docs_list_every_operation_without_an_external_request(browser, site, tmp_path):
    schema = httpx.get(f"{site}/openapi.json").json()
    listed = {(method.upper(), path) for path, methods in schema["paths"].items() for method in methods}
    operations = len(listed)
    for path, selector in (("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")):
        requested: list[str] = []
        for page in browser_page(browser, "about:blank"):
            page.on("request", lambda request, seen=requested: seen.append(request.url))
            page.goto(site + path)
            page.wait_for_function(f"() => document.querySelectorAll(\"{selector}\").length >= {operations}",
                                   timeout=30_000)
            assert page.locator(selector).count() == operations
            if path == "/docs":
                shown_ops = page.eval_on_selector_all(".opblock", "blocks => blocks.map(b => [b.querySelector("
                                                      "'.opblock-summary-method').textContent, b.querySelector("
                                                      "'.opblock-summary-path').dataset.path])")
                assert {tuple(op) for op in shown_ops} == listed
            screenshot(page, f"docs{path.replace('/', '-')}.png", tmp_path)
        outside = [url for url in requested if not url.startswith((site, "data:", "blob:", "about:"))]
        assert outside == [] and len(requested) >= 3


def test_a_site_probe_classifies_and_the_summary_links_its_evidence(page, site, workstation, tiny_model_dir,
                                                                     tmp_path):
    """A probe trained on the index's own modalities appears in the case view's choices, classifies, and
    the summary's case links open the cases they cite."""
    from click.testing import CliRunner

    from indexer.cli.main import main
    from indexer.labels import labels_from_metadata
    from storage.opening import open_index

    _, db, ids = workstation
    with open_index(db, read_only=True) as (_, repository):
        rows = list(csv.reader(io.StringIO(labels_from_metadata(repository))))
    labels = tmp_path / "modality.csv"
    labels.write_text("\n".join(["path,labels", *(f"{path},{tags.split(';')[0]}" for path, tags in rows[1:])]))
    trained = CliRunner().invoke(main, ["train-probe", "--db", str(db), "--labels", str(labels), "--name",
                                        "modality", "--model", str(tiny_model_dir), "--bootstrap", "0", "--replace"])
    assert trained.exit_code == 0, trained.output
    open_case(page, site, ids["ct_small"])
    page.wait_for_selector("#classify-preset option[value='probe:modality']", state="attached")
    page.select_option("#classify-preset", "probe:modality")
    page.click("#classify-go")
    page.wait_for_selector("#classification table.labels")
    assert "Probe modality: calibrated probabilities" in page.inner_text("#classification")
    expected = httpx.get(f"{site}/images/{ids['ct_small']}/summary", params={"probe": "modality", "k": 8}).json()
    page.click("#summarise")
    page.wait_for_selector("#case-summary .statements li")
    text = page.inner_text("#case-summary")
    assert "Findings: probe modality" in text and "not a diagnosis" in text
    assert page.locator("#case-summary .statements li").count() == len(expected["statements"])
    for statement in expected["statements"]:
        assert statement["text"] in text
    page.locator("#case-summary .disclaimer").scroll_into_view_if_needed()
    screenshot(page, "case-summary.png", tmp_path, full_page=False)
    link = page.locator("#case-summary .statements .case-link").first
    cited = int(link.get_attribute("data-image-id"))
    link.click()
    page.wait_for_function("(id) => (document.querySelector('#viewer-main').dataset.shown || '')"
                           ".startsWith(id + ':')", arg=str(cited))
