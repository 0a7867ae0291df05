"""Probes through real HTTP: classification with a site's probe (an indexed image and an upload), the
refusal of a probe of another model, exact search by a probe's probability with any order, and case
summaries whose every statement points at evidence that resolves, with role rules for report text."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from core.model.encoder import HFEncoder
from core.settings import Settings
from indexer.cli.main import main
from search_api.security.auth import AccessControl
from storage.access import AccessStore
from storage.opening import open_index
from storage.sql.probes import Probe
from tests.probe_corpus import ProbeCorpus, build_probe_corpus
from tests.search_api.conftest import open_client


@pytest.fixture(scope="module")
def probed(encoder: HFEncoder, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], ProbeCorpus, Probe, dict[int, np.ndarray]]]:
    corpus = build_probe_corpus(tmp_path_factory.mktemp("probe-api"), encoder.fingerprint.to_dict(), encoder.dim)
    result = CliRunner().invoke(main, ["train-probe", "--db", str(corpus.db), "--labels", str(corpus.labels_csv),
                                       "--name", "site", "--model", str(tiny_model_dir), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    with open_index(corpus.db, read_only=True) as (_, repository):
        probe = repository.get_probe("site")
        assert probe is not None
        other = Probe("other-model", "f" * 64, probe.training_fingerprint, probe.created_at, probe.labels,
                      probe.weights, probe.intercepts)
        repository.save_probe(other)
        ids, vectors = repository.get_embeddings(corpus.ids, encoder.dim)
    store = AccessStore.open(corpus.db)
    keys = {role: {"X-API-Key": store.create_key(role, role)[1]} for role in ("clinician", "researcher")}
    settings = Settings(db_dir=corpus.db, model=str(tiny_model_dir), device="cpu")
    access = AccessControl(store, pseudonym_secret=store.pseudonym_secret(),
                           researcher_fields=settings.researcher_fields)
    for client in open_client(settings, encoder, access):
        yield client, keys, corpus, probe, dict(zip(ids.tolist(), vectors, strict=True))


def test_probes_are_listed_and_one_of_another_model_is_refused(probed):
    client, keys, corpus, probe, _ = probed
    listed = {p["name"]: p for p in client.get("/probes", headers=keys["researcher"]).json()["probes"]}
    assert listed["site"]["usable"] and not listed["other-model"]["usable"]
    assert listed["site"]["labels"] == probe.labels and listed["site"]["patients"] == 48
    assert listed["site"]["metrics"]["effusion"]["auc"] > 0.95
    image_id = corpus.ids[0]
    refused = client.post(f"/images/{image_id}/classify", json={"probe": "other-model"}, headers=keys["clinician"])
    assert refused.status_code == 409 and "another model" in refused.json()["detail"][0]["msg"]
    unknown = client.post(f"/images/{image_id}/classify", json={"probe": "nope"}, headers=keys["clinician"])
    assert unknown.status_code == 404 and "site" in unknown.json()["detail"][0]["msg"]
    searched = client.post("/search/filter", json={"filters": {"probe": {"name": "other-model", "label": "nodule"}}},
                           headers=keys["clinician"])
    assert searched.status_code == 409 and searched.json()["detail"][0]["loc"] == ["body", "filters", "probe", "name"]
    bad_label = client.post("/search/filter", json={"filters": {"probe": {"name": "site", "label": "fracture"}}},
                            headers=keys["clinician"])
    assert bad_label.status_code == 422 and "effusion" in bad_label.json()["detail"][0]["msg"]


def test_classify_with_a_probe_gives_its_calibrated_probabilities(probed, encoder):
    client, keys, corpus, probe, vectors = probed
    for image_id in corpus.ids[:6]:
        answer = client.post(f"/images/{image_id}/classify", json={"probe": "site"}, headers=keys["clinician"]).json()
        assert answer["probe"] == "site" and {s["label"] for s in answer["labels"]} == set(probe.labels)
        expected = dict(zip(probe.labels, probe.probabilities(vectors[image_id][None])[0], strict=True))
        for score in answer["labels"]:
            assert score["probability"] == pytest.approx(float(expected[score["label"]]), abs=1e-5)
            assert score["cosine"] is None
        assert answer["labels"][0]["probability"] == max(expected.values()).item()
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    upload = client.post("/classify", files={"file": ("x.png", buffer.getvalue())}, data={"probe": "site"},
                         headers=keys["clinician"]).json()
    vector = encoder.encode_images([np.asarray(picture.convert("RGB"))])[0]
    expected = dict(zip(probe.labels, probe.probabilities(vector[None])[0], strict=True))
    assert {s["label"]: pytest.approx(s["probability"], abs=1e-3) for s in upload["labels"]} == {
        k: float(v) for k, v in expected.items()}


def test_search_by_a_probe_is_exact_and_ordered_as_asked(probed):
    client, keys, corpus, probe, vectors = probed
    j = probe.labels.index("effusion")
    everyone = np.array(sorted(vectors))
    p = probe.probabilities(np.stack([vectors[i] for i in everyone]))[:, j]
    expected = set(everyone[p >= 0.6].tolist())
    truth = {i for i, labels in zip(corpus.ids, corpus.labels, strict=True) if "effusion" in labels}
    assert len(expected ^ truth) <= 3  # the probe is right on this separable set
    condition = {"name": "site", "label": "effusion", "min_probability": 0.6}
    newest = client.post("/search/filter", json={"filters": {"probe": condition}, "order": "newest", "k": 1000},
                         headers=keys["clinician"]).json()
    assert newest["query_kind"] == "filter" and newest["total"] == len(expected)
    assert {r["image_id"] for r in newest["results"]} == expected
    dates = [date.fromisoformat(r["metadata"]["study_date"]) for r in newest["results"]]
    assert dates == sorted(dates, reverse=True) and all(r["score"] is None for r in newest["results"])
    assert all(r["probe_probability"] >= 0.6 for r in newest["results"])
    by_probability = client.post("/search/filter", json={"filters": {"probe": condition}, "k": 1000},
                                 headers=keys["clinician"]).json()["results"]
    shown = [r["probe_probability"] for r in by_probability]
    assert shown == sorted(shown, reverse=True)
    assert shown == pytest.approx(sorted(p[p >= 0.6].tolist(), reverse=True), abs=1e-5)
    pages = [client.post("/search/filter", json={"filters": {"probe": condition}, "order": "oldest", "k": 5,
                                                 "offset": o}, headers=keys["clinician"]).json()["results"]
             for o in (0, 5)]
    oldest = client.post("/search/filter", json={"filters": {"probe": condition}, "order": "oldest", "k": 10},
                         headers=keys["clinician"]).json()["results"]
    assert [r["image_id"] for r in pages[0] + pages[1]] == [r["image_id"] for r in oldest]
    chest_cr = client.post("/search/text", json={"query": "effusion", "k": 1000, "facets": True, "filters": {
        "modality": ["CR"], "probe": condition}}, headers=keys["clinician"]).json()
    cr = {i for i, patient in zip(corpus.ids, corpus.patients, strict=True) if int(patient[-3:]) % 2}
    assert {r["image_id"] for r in chest_cr["results"]} == expected & cr
    assert chest_cr["total"] == len(expected & cr) and chest_cr["facets"]["modality"] == {"CR": len(expected & cr)}
    assert all(r["score"] is not None for r in chest_cr["results"])
    exported = client.post("/search/filter?format=csv", json={"filters": {"probe": condition}, "k": 1000},
                           headers=keys["clinician"])
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert exported.status_code == 200 and len(table) == len(expected) and table[0]["score"] == ""
    assert [float(r["probe_probability"]) for r in table] == pytest.approx(shown, abs=1e-5)
    refused = client.post("/search/filter", json={"order": "newest"}, headers=keys["researcher"])
    assert refused.status_code == 403 and refused.json()["detail"][0]["loc"] == ["body", "order"]
    assert client.post("/search/filter", json={"order": "probability"}, headers=keys["clinician"]).status_code == 422


def test_a_summary_states_only_what_its_evidence_shows(probed):
    client, keys, corpus, _, vectors = probed
    image_id = corpus.ids[0]
    own_patient = corpus.patients[0]
    summary = client.get(f"/images/{image_id}/summary", params={"probe": "site", "k": 8},
                         headers=keys["clinician"]).json()
    assert summary["method"] == "probe site" and summary["findings"]["probe"] == "site"
    assert "not a diagnosis or a treatment recommendation" in summary["disclaimer"]
    cases = {c["image_id"]: c for c in summary["similar_cases"]}
    assert len(cases) == 8 and image_id not in cases
    owners = {i: p for i, p in zip(corpus.ids, corpus.patients, strict=True)}
    assert own_patient not in {owners[i] for i in cases} and len({owners[i] for i in cases}) == 8
    assert all(c["report_text"].startswith("Synthetic report") for c in cases.values())
    scores = [c["score"] for c in summary["similar_cases"]]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(float(max(vectors[i] @ vectors[image_id] for i in vectors
                                                 if owners[i] != own_patient)), abs=1e-5)
    for vote in summary["label_vote"]:
        holders = [i for i in cases if vote["label"] in cases[i]["labels"]]
        assert sorted(vote["image_ids"]) == sorted(holders) and vote["agreement"] == pytest.approx(len(holders) / 8)
    probabilities = {s["label"]: s["probability"] for s in summary["findings"]["labels"]}
    for statement in summary["statements"]:
        evidence = statement["evidence"]
        assert evidence["image_ids"] or evidence["probabilities"], statement
        for label, value in evidence["probabilities"].items():
            assert probabilities[label] == pytest.approx(value)
            assert f"{value:.2f}" in statement["text"]
        for case in evidence["image_ids"]:
            assert case in cases and client.get(f"/images/{case}", headers=keys["clinician"]).status_code == 200
    researcher = client.get(f"/images/{image_id}/summary", headers=keys["researcher"]).json()
    assert researcher["method"] == "zero-shot (labels of the nearest cases)"
    assert all(c["report_text"] is None and c["study_date"] is None for c in researcher["similar_cases"])
    assert "Synthetic report" not in str(researcher)
    assert client.get(f"/images/{image_id}/summary", params={"probe": "site", "preset": "chest-xray"},
                      headers=keys["clinician"]).status_code == 422
