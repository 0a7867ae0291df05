"""Report search on the page, in a real Chromium: a text search shows the cases whose reports assert
the finding with the phrase highlighted, the assertion filter switches to the negated ones, and the
mode switch changes what a text query searches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.security.auth import AccessControl
from tests.report_corpus import REPORTS
from tests.search_api.browser import browser_page, screenshot, serve


@pytest.fixture(scope="module")
def page(browser, report_settings: Settings, encoder: HFEncoder) -> Iterator[object]:
    for url in serve(report_settings, encoder, AccessControl(None, open_mode=True)):
        yield from browser_page(browser, url)


# the status line of a report-mode search: '... results for "pleural effusion" in reports'
REPORT_MODE_SHOWN = """() => document.querySelector('#status').textContent.includes('" in reports')"""


def stating(assertion: str) -> set[str]:
    return {r.name for r in REPORTS if any(("pleural effusion", assertion) in f for _, f in r.sentences)}


def shown(page, report_index) -> list[str]:
    ids = page.eval_on_selector_all(".result", "cards => cards.map(c => Number(c.dataset.imageId))")
    return [report_index[1][i] for i in ids]


def test_pleural_effusion_highlighted_then_the_negated_ones(page, report_index, tmp_path: Path):
    page.fill("#k", "100")
    page.fill("#query", "pleural effusion")
    page.press("#query", "Enter")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('in reports and images')")
    asserting = stating("present") | {"cr/named.dcm"}
    order = shown(page, report_index)
    assert set(order[:len(asserting)]) == asserting  # the asserting reports first
    first = page.locator(".result").first
    marks = first.locator(".snippet mark")
    assert marks.count() >= 1 and "effusion" in marks.first.inner_text().lower()
    assert marks.first.get_attribute("data-assertion") == "present"
    assert "pleural effusion: asserted" in first.locator(".badge").first.inner_text()
    assert screenshot(page, "report-search.png", tmp_path).stat().st_size > 10_000

    page.select_option("#assertion", "negated")
    page.wait_for_function("() => document.querySelector('.result .badge.negated') !== null")
    page.locator("#modes button[data-mode=report]").click()
    page.wait_for_function(REPORT_MODE_SHOWN)
    assert set(shown(page, report_index)) == stating("negated")
    for card in page.locator(".result").all():
        negated = card.locator(".snippet mark[data-assertion=negated]")
        assert negated.count() >= 1 and "effusion" in negated.first.inner_text().lower()
    assert "mode=report" in page.url and "assert=negated" in page.url
    assert screenshot(page, "report-search-negated.png", tmp_path).stat().st_size > 10_000

    page.select_option("#assertion", "")
    page.locator("#modes button[data-mode=image]").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('by image similarity')")
    assert page.locator(".result .snippet").count() == 0
    assert page.locator(".result").count() == len(report_index[1])


def test_report_text_in_a_snippet_is_text_not_markup(page, report_index):
    """A report's characters reach the page as text: an injected tag in a query or report is never HTML."""
    page.locator("#modes button[data-mode=report]").click()
    page.fill("#query", "<img src=x onerror=alert(1)> pleural effusion")
    page.press("#query", "Enter")
    page.wait_for_function(REPORT_MODE_SHOWN)
    assert page.locator(".snippet img").count() == 0
