"""The report index's postings and the ranking read from them (storage/reports/postings.py,
storage/reports/topk.py) against the engines' own BM25 over every match: the same documents, order and
scores, before and after removals, in SQLite and PostgreSQL; verify finds and repairs wrong counts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from core.reports import report_analyzer
from storage.opening import open_index
from storage.records import ImageRecord, Metadata, NewImage, Selection, SourceRecord
from storage.reports.rank import postgres_ranking, sqlite_ranking
from storage.reports.records import ReportMatch
from storage.reports.topk import _Scorer, topk_ranking
from tests.postgres import needs_postgres
from tests.storage.test_store import fingerprint, unit_vectors

SENTENCES = ["There is a {size} {side} {finding}.", "No {finding}.", "No evidence of {finding}.",
             "Possible {finding} in the {anatomy}.", "History of {finding}.", "{Finding} is seen in the {anatomy}.",
             "The {anatomy} is unremarkable.", "Heart size is normal.", "Comparison is made with the prior study."]
FINDINGS = ["pleural effusion", "pneumothorax", "consolidation", "cardiomegaly", "fracture", "nodule", "atelectasis",
            "pneumonia"]
RARE = ["tension pneumothorax", "rib fracture", "hydropneumothorax"]  # narrower terms, rarely reported
ANATOMY = ["right lung", "left lower lobe", "chest", "mediastinum"]
PATIENTS = 40


def reports(count: int, seed: int = 0) -> list[str]:
    """Reports of 1 to 14 sentences (a finding often mentioned more than once, narrower findings rarely,
    some reports repeated word for word, so that scores tie)."""
    rng = random.Random(seed)
    made: list[str] = []
    for _ in range(count):
        if made and rng.random() < 0.05:
            made.append(rng.choice(made))
            continue
        lines = []
        for _ in range(rng.randint(1, 14)):
            finding = rng.choice(RARE if rng.random() < 0.005 else FINDINGS[:2] if rng.random() < 0.4 else FINDINGS)
            lines.append(rng.choice(SENTENCES).format(size=rng.choice(["small", "large"]),
                                                      side=rng.choice(["right", "left"]), finding=finding,
                                                      Finding=finding.capitalize(), anatomy=rng.choice(ANATOMY)))
        made.append(" ".join(lines))
    return made


def images(texts: list[str]) -> list[NewImage]:
    vectors = unit_vectors(len(texts))
    return [NewImage(ImageRecord(f"r{i:063d}", "dicom", Metadata(patient_id=f"P{i % PATIENTS}", modality="CR",
                                                                  report_text=t)),
                     vectors[i], [SourceRecord("/a", f"r{i}.dcm", 0, f"fr{i}", 10, 1.0, patient_id=f"P{i % PATIENTS}")])
            for i, t in enumerate(texts)]


def single_group_queries() -> list[ReportMatch]:
    analyzer = report_analyzer()
    found = []
    for text_ in ["pleural effusion", "no pleural effusion", "pneumothorax", "possible pneumothorax", "fracture",
                  "history of fracture", "cardiomegaly", "consolidation", "no nodule", "chest", "mediastinum"]:
        for assertions in (None, ("negated", "uncertain"), ("present", "negated", "uncertain", "historical",
                                                            "family", "hypothetical")):
            query = analyzer.parse_query(text_)
            if assertions is not None and not any(c.kind == "finding" for c in query.concepts):
                continue
            for folded in (False, True):
                match = ReportMatch(tuple(tuple(g) for g in analyzer.query_groups(query, assertions, folded)),
                                    query.words)
                if len(match.groups) == 1 and not match.words:
                    found.append(match)
    assert any(len(m.groups[0]) > 1 for m in found)  # broader terms: a group of several tokens
    assert any(m.groups[0][0][1] == "8" for m in found)  # and their group tokens
    return found


def compare(repository, matches: list[ReportMatch]) -> int:
    """Asserts the postings' ranking is the engine's for every query and limit; returns the rankings compared."""
    compared = engine = 0
    postgres = repository.engine.dialect.name == "postgresql"
    with repository._sessions() as session:
        for match in matches:
            for limit in (1, 3, 10, 40, 5000):
                mine = topk_ranking(session, match, limit)
                theirs = (postgres_ranking if postgres else sqlite_ranking)(session, match, limit)
                if mine is None:  # a narrower term not rare beside the broad one: the engine ranks it
                    assert limit < 5000 and len(match.groups[0]) > 1
                    engine += 1
                    continue
                assert [i for i, _ in mine] == [i for i, _ in theirs], (match, limit)
                assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], abs=1e-9 if not postgres
                                                              else 1e-7), (match, limit)
                compared += len(theirs) > 0
    assert engine < compared / 3  # most are ranked from the postings
    return compared


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_the_postings_rank_as_the_engine_does_through_writes_removals_and_repair(database: str, tmp_path: Path,
                                                                                  request: pytest.FixtureRequest):
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    matches = single_group_queries()
    texts = reports(1200)
    with open_index(tmp_path / "db", create=True, database_url=url, reports=report_analyzer()) as (store, repository):
        store.bind_model(fingerprint())
        made = images(texts)
        store.write(made[:700])
        store.write(made[700:])  # a second transaction adds to the counts
        assert store.verify() == []
        assert compare(repository, matches) > 3 * len(matches)
        for patient in ("P3", "P17"):  # removals take their postings and counts with them
            store.remove(Selection(patient_id=patient))
        assert store.verify() == []
        assert compare(repository, matches) > 3 * len(matches)
        with repository.engine.begin() as connection:
            connection.execute(text("UPDATE report_terms SET documents = documents + 1 WHERE token <> ''"))
            connection.execute(text("DELETE FROM report_postings WHERE image_id = (SELECT min(image_id) "
                                    "FROM report_documents)"))
        problems = store.verify()
        assert any("have no postings" in p for p in problems) and any("counts disagree" in p for p in problems)
        store.verify(repair=True)
        assert store.verify() == []
        compare(repository, matches)


def test_queries_the_postings_do_not_rank_go_to_the_engine(tmp_path: Path):
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        store.bind_model(fingerprint())
        store.write(images(reports(50)))
        with repository._sessions() as session:
            assert topk_ranking(session, ReportMatch((("f9ppleuraleffusion",),), ("small",)), 10) is None  # words
            assert topk_ranking(session, ReportMatch((("f9ppleuraleffusion",), ("a9pright",))), 10) is None
            assert topk_ranking(session, ReportMatch((("f9pnosuchfinding",),)), 10) == []
        ranked = repository.rank_reports(ReportMatch((("f9ppleuraleffusion",), ("a9zchest",))), 10)
        assert ranked.ids  # the engine ranks them


def test_a_broad_term_is_one_group_token_ranked_from_the_postings_once_every_document_carries_it(tmp_path: Path):
    """Narrower findings as common as the broad one ("pneumothorax": tension-, hydro-): the unfolded
    group of three tokens is the engine's to rank; its group token is ranked from the postings, with the
    same matches; a document of another analysis sends the query back to the unfolded group."""
    analyzer = report_analyzer()
    rng = random.Random(3)
    texts = [" ".join(rng.choice(["There is a small {f}.", "No {f}.", "Large {f} on the right."]).format(
        f=rng.choice(["pneumothorax", "tension pneumothorax", "hydropneumothorax", "pleural effusion"]))
        for _ in range(rng.randint(1, 6))) for _ in range(400)]
    query = analyzer.parse_query("pneumothorax")
    unfolded = ReportMatch(tuple(tuple(g) for g in analyzer.query_groups(query)))
    match = ReportMatch(unfolded.groups, (), tuple(tuple(g) for g in analyzer.query_groups(query, folded=True)),
                        analyzer.fingerprint)
    assert len(unfolded.groups[0]) == 3 and match.folded is not None and len(match.folded[0]) == 1
    with open_index(tmp_path / "db", create=True, reports=analyzer) as (store, repository):
        store.bind_model(fingerprint())
        store.write(images(texts))
        with repository._sessions() as session:
            assert topk_ranking(session, unfolded, 10) is None  # not rare beside the broad term
            assert topk_ranking(session, ReportMatch(match.folded), 10) == sqlite_ranking(
                session, ReportMatch(match.folded), 10)
        ranked = repository.rank_reports(match, 10)
        assert ranked.ranked_by == "postings" and len(ranked.ids) == 10
        assert repository.report_matches(match) == repository.report_matches(unfolded)
        assert len(repository.report_matches(match)) > 200
        with repository.engine.begin() as connection:
            connection.execute(text("UPDATE report_documents SET analyzer = '1:old' WHERE image_id = "
                                    "(SELECT max(image_id) FROM report_documents)"))
        assert repository.rank_reports(match, 10).ranked_by == "engine"
        assert repository.report_matches(match) == repository.report_matches(unfolded)


@given(st.integers(1, 9), st.floats(0.001, 6.0), st.integers(2, 400), st.integers(1, 10**6))
def test_a_run_is_read_up_to_the_longest_document_whose_share_beats_the_floor(tf: int, floor: float, avgdl: int,
                                                                            hits: int):
    scorer = _Scorer(["f9ppleuraleffusion", "a9pchest"], 10**6, 10**6 * avgdl, {"f9ppleuraleffusion": hits})
    lengths = np.arange(0, 20 * avgdl + 2)
    above = lengths[scorer.shares("f9ppleuraleffusion", tf, lengths) > floor]
    longest = int(above[-1]) if len(above) else -1
    if longest == lengths[-1]:  # beyond the lengths tried: only the cutoff's own side is known
        assert scorer.cutoff("f9ppleuraleffusion", tf, floor) >= longest
    else:
        assert scorer.cutoff("f9ppleuraleffusion", tf, floor) == longest
