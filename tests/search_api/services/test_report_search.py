"""Report and hybrid search through HTTP over the hand-written report corpus (tests/report_corpus.py):
assertion-aware matching, the assertion filter, hybrid = reciprocal rank fusion computed by brute
force, snippets, the researcher's limits and hostile queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.model.encoder import HFEncoder
from core.reports import report_analyzer
from core.settings import Settings
from core.sources import open_source
from indexer.engines.runner import run_indexing
from search_api.app import build_service, create_app
from search_api.routes.modes import REPORT_FIELDS
from search_api.security.auth import AccessControl
from storage.access import AccessStore
from tests.postgres import needs_postgres
from tests.report_corpus import REPORTS

ALL = 1000


def stating(term: str, assertion: str) -> set[str]:
    """Corpus reports with a sentence that states `term` so."""
    return {report.name for report in REPORTS
            if any((term, assertion) in findings for _, findings in report.sentences)}


def search(client: TestClient, query: str, headers: dict[str, str] | None = None, **options: Any) -> dict:
    response = client.post("/search/text", json={"query": query, "k": ALL, **options}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()


def names(found: dict, report_index) -> list[str]:
    return [report_index[1][result["image_id"]] for result in found["results"]]


def test_report_mode_finds_the_reports_that_assert_a_finding(report_client: TestClient, report_index):
    found = search(report_client, "pleural effusion", mode="report")
    assert found["mode"] == "report"
    assert set(names(found, report_index)) == stating("pleural effusion", "present") | {"cr/named.dcm"}
    assert not set(names(found, report_index)) & (stating("pleural effusion", "negated") -
                                                   stating("pleural effusion", "present"))
    assert found["report_query"]["concepts"] == [{"term": "pleural effusion", "kind": "finding",
                                                  "assertions": ["present"]}]
    assert found["total"] == len(found["results"])
    for result in found["results"]:
        match = result["match"]
        assert match["report_rank"] == result["rank"] and match["report_score"] is not None
        text, marks = match["snippet"]["text"], match["snippet"]["marks"]
        effusions = [m for m in marks if m["term"] == "pleural effusion"]
        assert effusions and all(m["kind"] == "finding" for m in effusions)
        assert any(m["assertion"] == "present" for m in effusions)
        assert all("effusion" in text[m["start"]:m["end"]].lower() or "fluid" in text[m["start"]:m["end"]].lower()
                   for m in effusions)
        assert {"term": "pleural effusion", "assertion": "present"} in match["findings"]


def test_the_assertion_filter_asks_for_the_negated_ones(report_client: TestClient, report_index):
    found = search(report_client, "pleural effusion", mode="report", filters={"assertion": ["negated"]})
    assert set(names(found, report_index)) == stating("pleural effusion", "negated")
    for result in found["results"]:
        assert any(m["term"] == "pleural effusion" and m["assertion"] == "negated"
                   for m in result["match"]["snippet"]["marks"])
    said = search(report_client, "no pleural effusion", mode="report")  # the query can say it too
    assert set(names(said, report_index)) == stating("pleural effusion", "negated")
    unsure = search(report_client, "pneumothorax", mode="report", filters={"assertion": ["uncertain", "hypothetical"]})
    assert set(names(unsure, report_index)) == stating("pneumothorax", "uncertain") | stating("pneumothorax",
                                                                                               "hypothetical")


def test_a_broader_term_and_anatomy(report_client: TestClient, report_index):
    effusion = set(names(search(report_client, "effusion", mode="report"), report_index))
    assert stating("pleural effusion", "present") | stating("joint effusion", "present") <= effusion
    left = set(names(search(report_client, "left pleural effusion", mode="report"), report_index))
    assert "cxr-effusion-large" in left and "cxr-effusion-right" not in left


def rrf(reports: list[int], images: list[int], k: int = 60, report_weight: float = 1.0, image_weight: float = 1.0,
        window: int = 1000) -> list[int]:
    """Reciprocal rank fusion over whole rankings, by its definition (search_api/services/fusion.py's docstring)."""
    report_rank = {i: r for r, i in enumerate(reports, start=1) if r <= window}
    image_rank = {i: r for r, i in enumerate(images, start=1)}

    def score(image_id: int) -> float:
        r, i = report_rank.get(image_id), image_rank[image_id]
        return (report_weight / (k + r) if r else 0.0) + (image_weight / (k + i) if i <= window else 0.0)

    fused = sorted((i for i in images if score(i) > 0), key=lambda i: (-score(i), i))
    return fused + [i for i in images if score(i) == 0]


@pytest.mark.parametrize(("filters", "fusion"), [
    (None, None),
    ({"modality": ["CR"]}, None),
    ({"body_part": ["CHEST"]}, {"k": 5, "report_weight": 2.0, "image_weight": 0.5}),
    (None, {"window": 10}),
    (None, {"report_weight": 0.0}),
])
def test_hybrid_is_brute_force_rrf_on_every_page(report_client: TestClient, filters, fusion):
    query = "small pleural effusion"
    extra: dict[str, Any] = {"filters": filters} if filters else {}
    images = [r["image_id"] for r in search(report_client, query, mode="image", **extra)["results"]]
    reports = [r["image_id"] for r in search(report_client, query, mode="report", **extra)["results"]]
    assert reports and set(reports) <= set(images)
    expected = rrf(reports, images, **(fusion or {}))
    if fusion:
        extra["fusion"] = fusion
    whole = search(report_client, query, **extra)  # hybrid: the default where the index has reports
    assert whole["mode"] == "hybrid" and whole["total"] == len(images)
    assert [r["image_id"] for r in whole["results"]] == expected
    paged = []
    for offset in range(0, len(images) + 4, 4):
        page = search(report_client, query, **{**extra, "k": 4, "offset": offset})
        paged += [r["image_id"] for r in page["results"]]
    assert paged == expected
    by_study = search(report_client, query, group_by="study", **extra)  # one image per study here
    assert [r["image_id"] for r in by_study["results"]] == expected
    for result in whole["results"]:
        match = result["match"]
        rank = images.index(result["image_id"]) + 1  # beyond the window, only known where it was computed
        assert match["image_rank"] == rank if rank <= (fusion or {}).get("window", ALL) else match["image_rank"] in (
            None, rank)
        assert match["report_rank"] == (reports.index(result["image_id"]) + 1
                                        if result["image_id"] in reports else None)


def test_hybrid_puts_asserting_reports_above_negating_ones(report_client: TestClient, report_index):
    order = names(search(report_client, "pleural effusion"), report_index)
    asserting = stating("pleural effusion", "present") | {"cr/named.dcm"}
    negating = stating("pleural effusion", "negated") - asserting
    assert max(order.index(n) for n in asserting) < min(order.index(n) for n in negating)


@pytest.mark.parametrize("query", ['"pleural effusion', "pleural OR effusion", "NEAR(pleural effusion)",
                                   "body:effusion", "effus*", "^pleural effusion", "pleural AND NOT effusion",
                                   "pleural effusion)) --", "effusion'; DROP TABLE report_documents; --"])
def test_query_syntax_is_only_words(report_client: TestClient, query: str):
    for mode in ("report", "hybrid"):
        response = report_client.post("/search/text", json={"query": query, "mode": mode})
        assert response.status_code == 200, response.text


def test_stop_words_long_queries_and_no_text(report_client: TestClient):
    stop = search(report_client, "the of and", mode="report")
    assert stop["results"] == [] and stop["report_query"]["reason"]
    fallback = search(report_client, "the of and")
    assert fallback["mode"] == "image" and fallback["notes"] and fallback["results"]
    long = report_client.post("/search/text", json={"query": "effusion " * 1200, "mode": "report"})
    assert long.status_code == 422 and "query" in long.text
    many = report_client.post("/search/text", json={"query": " ".join(f"w{i}" for i in range(300)), "mode": "report"})
    assert many.status_code == 422 and "query" in many.text
    image_only = report_client.post("/search/similar", json={"image_id": 1, "filters": {"assertion": ["negated"]}})
    assert image_only.status_code == 422 and "assertion" in image_only.text


def test_batch_takes_the_mode(report_client: TestClient):
    response = report_client.post("/search/batch", json={"queries": [
        {"parts": [{"text": "pleural effusion"}], "mode": "report", "k": 3},
        {"parts": [{"text": "pleural effusion"}], "mode": "image", "k": 3},
        {"parts": [{"text": "pleural effusion"}], "k": 3}]})
    assert response.status_code == 200, response.text
    assert [r["mode"] for r in response.json()["responses"]] == ["report", "image", "hybrid"]


@given(query=st.text(min_size=1, max_size=120), mode=st.sampled_from(["report", "hybrid"]),
       negated=st.booleans())
@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_fuzzed_queries_never_give_a_server_error(report_client: TestClient, query: str, mode: str, negated: bool):
    body: dict[str, Any] = {"query": query, "mode": mode, "k": 5}
    if negated:
        body["filters"] = {"assertion": ["negated"]}
    response = report_client.post("/search/text", json=body)
    assert response.status_code < 500, (query, response.text)


@pytest.fixture(scope="module")
def researchers(report_settings: Settings, encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[dict[str, tuple[TestClient, dict[str, str]]]]:
    """Two apps: the default researcher allow-list, and one that grants the report fields."""
    clients = {}
    services = []
    store = AccessStore.open(tmp_path_factory.mktemp("report-access"))
    key = {"X-API-Key": store.create_key("researcher", "researcher")[1]}
    with pytest.MonkeyPatch.context():
        for name, fields in (("default", report_settings.researcher_fields),
                             ("reports", [*report_settings.researcher_fields, *REPORT_FIELDS])):
            settings = report_settings.model_copy(update={"researcher_fields": fields})
            service = build_service(settings, encoder=encoder)
            services.append(service)
            app = create_app(settings, service=service, access=AccessControl(
                store, pseudonym_secret=store.pseudonym_secret(), researcher_fields=fields))
            client = TestClient(app, base_url="http://localhost")
            clients[name] = (client.__enter__(), key)
        yield clients
        for client, _ in clients.values():
            client.__exit__(None, None, None)
    for service in services:
        service.close()


def test_a_researcher_neither_searches_nor_sees_reports(researchers):
    client, key = researchers["default"]
    refused = client.post("/search/text", json={"query": "Quistorp", "mode": "report"}, headers=key)
    assert refused.status_code == 403 and "MEDSEARCH_RESEARCHER_FIELDS" in refused.text
    refused = client.post("/search/text", json={"query": "effusion", "filters": {"assertion": ["negated"]}},
                          headers=key)
    assert refused.status_code == 403
    for query in ("Quistorp", "Quistorp pleural effusion", "pleural effusion"):
        hybrid = search(client, query, key)
        image = search(client, query, key, mode="image")
        assert hybrid["mode"] == "image" and "MEDSEARCH_RESEARCHER_FIELDS" in hybrid["notes"][0]
        assert hybrid["results"] == image["results"] and hybrid["total"] == image["total"]
        assert hybrid["report_query"] is None
        assert "Quistorp" not in str(hybrid) and all(r["match"] is None for r in hybrid["results"])


def test_a_researcher_granted_reports_searches_them(researchers, report_index):
    client, key = researchers["reports"]
    found = search(client, "Quistorp", key, mode="report")
    assert names(found, report_index) == ["cr/named.dcm"]
    assert "Quistorp" in found["results"][0]["match"]["snippet"]["text"]


def test_the_index_without_reports_answers_image_searches(client: TestClient, tmp_path: Path):
    """The shared test index (its reports, if any, aside): an explicit image mode never needs reports."""
    response = client.post("/search/text", json={"query": "chest", "mode": "image", "k": 3})
    assert response.status_code == 200 and response.json()["mode"] == "image"


RANKED_QUERIES = [("pleural effusion", {}), ("no pleural effusion", {}), ("pneumothorax", {"assertion": ["negated"]}),
                  ("effusion", {}), ("consolidation", {"assertion": ["negated", "uncertain"]}), ("cardiomegaly", {}),
                  ("atelectasis", {}), ("nodule", {}), ("chest", {}), ("small right", {}), ("lungs are clear", {}),
                  ("knee", {}), ("no acute fracture", {}), ("right pleural effusion", {})]


@needs_postgres
def test_sqlite_and_postgresql_give_the_same_report_rankings(report_index, report_client: TestClient,
                                                              postgres_url: str, encoder: HFEncoder,
                                                              tiny_model_dir: Path, tmp_path: Path):
    from storage.opening import open_index
    from tests.conftest import rows_by_path
    from tests.search_api.conftest import open_client

    db = tmp_path / "pg"
    with open_index(db, create=True, database_url=postgres_url, reports=report_analyzer()) as (store, repository):
        assert run_indexing(open_source(report_index[0].parent / "archive"), store, repository, encoder,
                            batch_size=8).failed == 0
    paths = {}
    for folder, url in ((report_index[0], None), (db, postgres_url)):
        with open_index(folder, read_only=True, database_url=url) as (store, repository):
            paths[url] = {image.id: path for path, image in rows_by_path(repository).items()}
            assert store.verify() == []
    settings = Settings(db_dir=db, database_url=postgres_url, model=str(tiny_model_dir), device="cpu")
    compared = distinct = 0
    for pg_client in open_client(settings, encoder):
        for query, filters in RANKED_QUERIES:
            ranked = {}
            for url, client in ((None, report_client), (postgres_url, pg_client)):
                found = search(client, query, mode="report", filters=filters)["results"]
                ranked[url] = [(paths[url][r["image_id"]], round(r["match"]["report_score"], 6)) for r in found]
            distinct = max(distinct, len({score for _, score in ranked[None]}))
            assert ranked[None] == ranked[postgres_url], query  # the same documents, order and scores
            compared += len(ranked[None])
    assert compared > 40 and distinct >= 5  # many documents, ranked by scores that differ
