"""The web page in a real headless Chromium (Debian's, driven by Playwright; no browser download),
against a real uvicorn server on a loopback socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.security.auth import AccessControl
from tests.conftest import dicom_file
from tests.search_api.browser import browser_page, screenshot, serve


@pytest.fixture(scope="module")
def server(api_settings: Settings, encoder: HFEncoder) -> Iterator[str]:
    yield from serve(api_settings, encoder, AccessControl(None, open_mode=True))

@pytest.fixture(scope="module")
def page(browser, server: str) -> Iterator[object]:
    yield from browser_page(browser, server)


def test_query_shows_results_with_previews(page, tmp_path: Path):
    assert "RANDOM" in page.inner_text("#banner")
    page.fill("#query", "chest ct")
    page.press("#query", "Enter")
    page.wait_for_selector(".result")
    assert page.locator(".result").count() >= 10
    assert "results for" in page.inner_text("#status")
    page.wait_for_function("() => [...document.querySelectorAll('.result img')].slice(0, 4)"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    assert screenshot(page, "search-page.png", tmp_path).stat().st_size > 10_000


def test_dropped_dicom_is_ranked_first(page):
    data = list(dicom_file("CT_small.dcm").read_bytes())
    transfer = page.evaluate_handle(
        "(bytes) => { const dt = new DataTransfer();"
        " dt.items.add(new File([new Uint8Array(bytes)], 'CT_small.dcm')); return dt; }", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('results for CT_small.dcm')")
    first = page.locator(".result").first
    assert first.get_attribute("data-path") == "dicom/CT_small.dcm"
    assert first.inner_text().startswith("#1 · 1.000")


def test_case_view_shows_metadata_and_similar_cases(page):
    page.locator(".result").first.click()
    page.wait_for_selector("#case", state="visible")
    page.wait_for_selector("#similar .result")
    assert "CT" in page.inner_text("#case-meta")
    assert page.locator("#similar .result").count() >= 5
    page.click("#close")
    page.wait_for_selector("#case", state="hidden")


def test_a_bad_upload_shows_the_error(page, tmp_path: Path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image at all, just some words " * 5)
    page.set_input_files("#file", str(bad))
    page.wait_for_function("() => document.querySelector('#status').className === 'error'")
    assert "notes.txt" in page.inner_text("#status") and "not a DICOM" in page.inner_text("#status")


def test_with_keys_the_page_asks_for_one_then_works(browser, api_settings: Settings, encoder: HFEncoder,
                                                    tmp_path: Path):
    from storage.access import AccessStore

    store = AccessStore.open(tmp_path)
    _, key = store.create_key("browser", "clinician")
    access = AccessControl(store=store, pseudonym_secret=store.pseudonym_secret())
    for url in serve(api_settings, encoder, access):
        for page in browser_page(browser, url):
            page.fill("#query", "chest ct")
            page.press("#query", "Enter")
            page.wait_for_function("() => document.querySelector('#status').className === 'error'")
            assert "API key" in page.inner_text("#status")
            page.fill("#apikey", key)
            page.dispatch_event("#apikey", "change")
            page.press("#query", "Enter")
            page.wait_for_selector(".result")
            page.wait_for_function("() => [...document.querySelectorAll('.result img')].slice(0, 3)"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            assert page.locator(".result").count() >= 10


def test_a_result_from_the_pacs_links_to_its_viewer(browser, orthanc, encoder: HFEncoder, tiny_model_dir: Path,
                                                   tmp_path: Path):
    from tests.search_api.routes.test_pacs_links import index_pacs, pacs_settings

    settings = pacs_settings(orthanc, tmp_path / "db", tiny_model_dir)
    index_pacs(settings, orthanc, encoder)
    for url in serve(settings, encoder, AccessControl(None, open_mode=True)):
        for page in browser_page(browser, url):
            page.fill("#query", "ct")
            page.press("#query", "Enter")
            page.wait_for_selector(".result a.pacs")
            href = page.locator(".result a.pacs").first.get_attribute("href")
            assert href.startswith("https://viewer.example.org/ohif/viewer?StudyInstanceUIDs=1.2.826.")
            page.wait_for_function("() => [...document.querySelectorAll('.result img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")  # previews via WADO-RS
            page.locator(".result .meta").first.click()
            page.wait_for_selector("#case", state="visible")
            links = page.locator("#case-meta td.pacs a")
            assert links.count() == 2 and "WADO-RS" in links.nth(1).inner_text()
            assert links.nth(1).get_attribute("href").startswith(orthanc.dicomweb + "/studies/")
            screenshot(page, "pacs-case.png", tmp_path)


def test_relevance_map_over_a_case_for_the_text_query(page, tmp_path: Path):
    """A text search, a case opened, the relevance map toggled on over the image at the image's own size,
    its opacity changed, then off; a screenshot a person looks at (make screenshots)."""
    page.fill("#query", "chest ct")
    page.press("#query", "Enter")
    page.fill("#k", "100")
    page.press("#query", "Enter")
    page.wait_for_selector('.result[data-path="dicom/CT_small.dcm"]')
    page.locator('.result[data-path="dicom/CT_small.dcm"]').click()  # a CT slice, for the screenshot
    page.wait_for_selector("#case", state="visible")
    viewer = page.locator("#viewer-main")
    viewer.locator(".map-toggle").click()
    page.wait_for_function("() => document.querySelector('#viewer-main').dataset.map !== undefined"
                           " && document.querySelector('#viewer-main img.overlay').naturalWidth > 0")
    sizes = page.evaluate("""() => { const v = document.querySelector('#viewer-main img.view'),
        o = document.querySelector('#viewer-main img.overlay'),
        a = v.getBoundingClientRect(), b = o.getBoundingClientRect();
        return [v.naturalWidth, v.naturalHeight, o.naturalWidth, o.naturalHeight, a.x, a.y, a.width, a.height,
                b.x, b.y, b.width, b.height]; }""")
    assert sizes[:2] == sizes[2:4]  # the overlay is drawn at the preview's size
    assert sizes[4:8] == sizes[8:12]  # and laid exactly over it on the screen
    assert viewer.locator(".map-toggle").get_attribute("aria-pressed") == "true"
    assert "Not a segmentation" in viewer.locator(".map-note").inner_text()
    viewer.locator(".opacity").fill("70")
    assert page.evaluate("() => document.querySelector('#viewer-main img.overlay').style.opacity") == "0.7"
    assert screenshot(page, "relevance-map.png", tmp_path, full_page=False).stat().st_size > 10_000
    viewer.locator(".map-toggle").click()
    assert viewer.locator("img.overlay").is_hidden()
    page.click("#close")
    page.wait_for_selector("#case", state="hidden")
