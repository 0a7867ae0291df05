"""Report analysis (core.reports): medspaCy's ConText assertions measured on the hand-written corpus,
queries read as words and concepts only, and a site's vocabulary and rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from core.reports import ReportAnalyzer, VocabularyError, load_vocabulary, report_analyzer
from core.reports.text import WORD, concept_token, group_token, normalise
from tests.report_corpus import REPORTS

# the bar: at least 0.9 right per assertion for these (the others are measured and printed)
REQUIRED = ("present", "negated", "uncertain", "historical")


@pytest.fixture(scope="module")
def analyzer() -> ReportAnalyzer:
    return report_analyzer()


def corpus_accuracy(analyzer: ReportAnalyzer) -> tuple[Counter[str], Counter[str], list[str]]:
    """Per expected assertion: how many findings the corpus annotates and how many the analysis of the
    whole report gives that assertion, in that sentence. Returns (total, right, the wrong ones)."""
    total: Counter[str] = Counter()
    right: Counter[str] = Counter()
    wrong: list[str] = []
    for report in REPORTS:
        analysis = analyzer.analyze(report.text, [report.description])
        assert analysis is not None and analysis.has_report
        start = 0
        for sentence, expected in report.sentences:
            end = start + len(sentence)
            found = {(m.term, m.assertion) for m in analysis.mentions
                     if m.kind == "finding" and start <= m.start < end}
            for term, assertion in expected:
                total[assertion] += 1
                if (term, assertion) in found:
                    right[assertion] += 1
                else:
                    wrong.append(f"{report.name}: {sentence!r}: {term} expected {assertion}, found {sorted(found)}")
            start = end + 1  # Report.text joins sentences with one space
    return total, right, wrong


def test_assertion_accuracy_on_the_hand_written_corpus(analyzer: ReportAnalyzer):
    sentences = sum(len(report.sentences) for report in REPORTS)
    total, right, wrong = corpus_accuracy(analyzer)
    print(f"{sentences} sentences, {sum(total.values())} findings; accuracy per assertion:")
    for assertion in total:
        print(f"  {assertion:13s} {right[assertion]}/{total[assertion]} = {right[assertion] / total[assertion]:.2f}")
    print("\n".join(wrong))
    assert sentences >= 60
    for assertion in REQUIRED:
        assert total[assertion] >= 7, f"the corpus needs more {assertion} findings"
        assert right[assertion] / total[assertion] >= 0.9, (assertion, wrong)


def test_negation_changes_the_concept_but_not_the_words(analyzer: ReportAnalyzer):
    asserted = analyzer.analyze("Small right pleural effusion.")
    negated = analyzer.analyze("No pleural effusion.")
    assert asserted is not None and negated is not None
    assert concept_token("finding", "present", "pleural effusion") in asserted.concepts.split()
    assert concept_token("finding", "negated", "pleural effusion") in negated.concepts.split()
    assert concept_token("finding", "present", "pleural effusion") not in negated.concepts.split()
    assert "effus" in asserted.body.split() and "effus" in negated.body.split()


def test_anatomy_is_bound_to_its_sentence(analyzer: ReportAnalyzer):
    """'No right ... Small left ...': a right pleural effusion is negated, a left one asserted."""
    analysis = analyzer.analyze("No right pleural effusion. Small left pleural effusion.")
    assert analysis is not None
    concepts = set(analysis.concepts.split())
    right_query = analyzer.query_groups(analyzer.parse_query("right pleural effusion"))
    left_query = analyzer.query_groups(analyzer.parse_query("left pleural effusion"))
    assert not all(concepts & set(group) for group in right_query)
    assert all(concepts & set(group) for group in left_query)


def test_a_broader_term_finds_the_narrower_ones(analyzer: ReportAnalyzer):
    groups = analyzer.query_groups(analyzer.parse_query("effusion"))
    assert concept_token("finding", "present", "pleural effusion") in groups[0]
    assert concept_token("finding", "present", "joint effusion") in groups[0]


def test_a_narrower_mention_carries_the_group_token_of_each_broader_term(analyzer: ReportAnalyzer):
    analysis = analyzer.analyze("Small left pleural effusion. No tension pneumothorax.")
    assert analysis is not None
    tokens = analysis.concepts.split()
    assert group_token("finding", "present", "effusion") in tokens  # pleural effusion is an effusion
    assert group_token("finding", "negated", "pneumothorax") in tokens
    assert group_token("finding", None, "pneumothorax") in tokens
    assert group_token("finding", "present", "pneumothorax") not in tokens
    folded = analyzer.query_groups(analyzer.parse_query("no pneumothorax"), folded=True)
    assert folded == [[group_token("finding", "negated", "pneumothorax")]]
    assert analyzer.query_groups(analyzer.parse_query("cardiomegaly"), folded=True) == \
        analyzer.query_groups(analyzer.parse_query("cardiomegaly"))  # no narrower terms: its own token


def test_context_rules_spelled_as_phrases_match_as_their_token_patterns():
    """Every spelling of every rule that core.reports.analyzer.as_phrases turns into phrases, before and
    after a finding, analysed by ConText with the token patterns and with the phrases: the same."""
    import core.reports.analyzer as module

    vocabulary = load_vocabulary()
    phrases = module.ReportAnalyzer(vocabulary, cache_size=0)
    original = module.as_phrases
    module.as_phrases = lambda rule, tokens_of: [rule]
    try:
        patterns = module.ReportAnalyzer(vocabulary, cache_size=0)
    finally:
        module.as_phrases = original
    import json

    import medspacy

    defaults = json.loads((Path(medspacy.__file__).resolve().parents[1] / "resources" / "en" /
                           "context_rules.json").read_text())["context_rules"]
    spelled = [one["literal"] for rule in [*defaults, *vocabulary.rules] if rule.get("pattern")
               for one in module.as_phrases(rule, phrases._nlp.make_doc) if "pattern" not in one]
    assert len(spelled) > 50
    for literal in spelled:
        for text in (f"{literal.capitalize()} pleural effusion.", f"Pleural effusion {literal} pneumonia.",
                     f"The {literal} small right pneumothorax is seen."):
            a, b = patterns.analyze(text), phrases.analyze(text)
            assert a is not None and b is not None and (a.concepts, a.mentions) == (b.concepts, b.mentions), text


@pytest.mark.parametrize("query", ['"pleural effusion', 'pleural OR effusion NEAR(a b) body:* ^x', "a* AND -b",
                                   "'; DROP TABLE images; --", "\x00\u202e\ufffd", "ﬁbrosis Ünïcode", "(" * 50])
def test_a_query_is_words_and_concepts_never_syntax(analyzer: ReportAnalyzer, query: str):
    parsed = analyzer.parse_query(query)
    assert all(WORD.fullmatch(word) for word in parsed.words)
    for group in analyzer.query_groups(parsed):
        assert all(WORD.fullmatch(token) for token in group)


def test_stop_words_and_modifiers_are_not_words_to_find(analyzer: ReportAnalyzer):
    assert analyzer.parse_query("the of and no not").empty
    possible = analyzer.parse_query("possible pneumothorax")
    assert possible.words == () and possible.concepts[0].assertion == "uncertain"
    assert normalise("Pleural EFFUSIONS, naïve") == ["pleural", "effus", "naiv"]


def test_a_site_adds_terms_and_rules(tmp_path: Path):
    terms = tmp_path / "site-terms.csv"
    terms.write_text("kind,term,synonyms,parent\n"
                     "finding,bochdalek hernia,bochdalek defect,hernia\n"
                     "finding,pneumothorax,ptx,\n")  # a shipped term gains a synonym
    rules = tmp_path / "site-rules.json"
    rules.write_text('{"context_rules": [{"literal": "sans", "category": "NEGATED_EXISTENCE",'
                     ' "direction": "FORWARD"}]}')
    analyzer = ReportAnalyzer(load_vocabulary(terms, rules))
    analysis = analyzer.analyze("Left Bochdalek defect. Sans ptx.")
    assert analysis is not None
    assert {(m.term, m.assertion) for m in analysis.mentions} >= {("bochdalek hernia", "present"),
                                                                 ("pneumothorax", "negated")}
    assert concept_token("finding", "present", "bochdalek hernia") in analyzer.query_groups(
        analyzer.parse_query("hernia"))[0]
    assert analyzer.fingerprint != report_analyzer().fingerprint  # an index knows its documents are stale


@pytest.mark.parametrize(("text", "named"), [
    ("kind,term\nfinding,ok\nsymptom,cough\n", "line 3, column kind"),
    ("kind,term\nfinding,\n", "line 2, column term"),
    ("term\nx\n", "no kind column"),
    ("kind,term,synonyms,parent\nfinding,bochdalek,,nowhere\n", "parent 'nowhere'"),
    ("kind,term\nanatomy,pneumothorax\n", "already a finding"),
])
def test_a_bad_site_vocabulary_names_the_file_line_and_column(tmp_path: Path, text: str, named: str):
    path = tmp_path / "site.csv"
    path.write_text(text)
    with pytest.raises(VocabularyError, match=named):
        load_vocabulary(path)


@pytest.mark.parametrize(("text", "named"), [("[1, 2]", "not a ConText rules file"),
                                             ('{"context_rules": [{"literal": "x"}]}', r"context_rules\[0\]"),
                                             ("{", "not a ConText rules file")])
def test_bad_site_rules_name_the_file(tmp_path: Path, text: str, named: str):
    path = tmp_path / "rules.json"
    path.write_text(text)
    with pytest.raises(VocabularyError, match=named) as error:
        load_vocabulary(None, path)
    assert str(path) in str(error.value)
