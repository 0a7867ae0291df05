"""`medsearch-api search` against a real uvicorn serving the report corpus: the modes, the assertion
filter, the marked snippets, and errors a person can act on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.security.auth import AccessControl
from tests.search_api.browser import serve


@pytest.fixture(scope="module")
def api_url(report_settings: Settings, encoder: HFEncoder) -> Iterator[str]:
    yield from serve(report_settings, encoder, AccessControl(None, open_mode=True))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search_api.cli", "search", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_report_mode_prints_the_asserting_cases_with_the_terms_marked(api_url: str):
    found = cli("pleural effusion", "--url", api_url, "--mode", "report", "-k", "50")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith("report search, ")
    snippets = [line for line in lines[1:] if line.startswith("     ")]
    assert len(snippets) == len([line for line in lines[1:] if ". image " in line]) >= 4
    assert all("effusion:present]" in line for line in snippets)  # every case shown asserts it
    negated = cli("pleural effusion", "--url", api_url, "--mode", "report", "--assertion", "negated")
    assert negated.returncode == 0, negated.stderr
    shown = [line for line in negated.stdout.splitlines()[1:] if line.startswith("     ")]
    assert shown and all("effusion:negated]" in line for line in shown)  # "no pleural effusion" cases


def test_hybrid_is_the_default_and_json_is_the_api_answer(api_url: str):
    import json

    answer = json.loads(cli("small right pleural effusion", "--url", api_url, "--json", "-k", "5").stdout)
    assert answer["mode"] == "hybrid" and len(answer["results"]) == 5
    assert all("report_rank" in r["match"] for r in answer["results"])


def test_errors_are_one_line_each(api_url: str):
    nobody = cli("effusion", "--url", "http://127.0.0.1:1")
    assert nobody.returncode == 2 and "no medsearch API answers at http://127.0.0.1:1" in nobody.stderr
    assert "Traceback" not in nobody.stderr
    refused = cli("the", "--url", api_url, "--mode", "report", "--assertion", "negated")
    assert refused.returncode == 2 and "answered 422: filters.assertion: " in refused.stderr
    assert "Traceback" not in refused.stderr
