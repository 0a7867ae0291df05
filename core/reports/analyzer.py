"""Reports analysed at index time and queries at search time, with the same rules: sentences, the
findings and anatomy of the vocabulary (core/reports/vocabulary.py) found by medspaCy's target matcher,
and each finding's assertion by medspaCy's ConText (negated, uncertain, historical, family,
hypothetical, else present), on a blank spaCy pipeline: nothing is downloaded.

Sentences are split by spaCy's rule-based sentencizer and at line breaks: medspaCy's PyRuSH
sentencizer cost 18 ms of a 21 ms analysis of a 106-word report here, the whole pipeline with this one
4.6 ms. ConText's scope ends at a sentence's end, so a sentence is analysed on its own and its result
kept (an LRU cache): radiology reports repeat their sentences ("No pneumothorax."), and a sentence
seen before costs a dictionary look-up.

Anatomy is bound to the findings of its sentence: "No right pleural effusion. Small left pleural
effusion." asserts a left effusion and negates a right one, so a query for a right pleural effusion
does not match it. A term with narrower ones (effusion > pleural effusion) matches them in queries.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from core.reports.text import ASSERTIONS, concept_token, group_token, normalise
from core.reports.vocabulary import Vocabulary, VocabularyError

logger = logging.getLogger(__name__)

ANALYZER_VERSION = "2"  # 2: group tokens of the terms with narrower ones
# when ConText gives a mention several modifiers, the first of these wins
PRECEDENCE = (("is_family", "family"), ("is_hypothetical", "hypothetical"), ("is_negated", "negated"),
              ("is_uncertain", "uncertain"), ("is_historical", "historical"))
LINES = re.compile(r"[^\r\n]+")
MAX_REPORT_CHARS = 100_000  # longer text is not a report: analysed up to here
RECENT_DOCUMENTS = 256  # whole documents remembered (the images of a study share one report)


class Mention(NamedTuple):
    term: str  # canonical vocabulary term
    kind: str  # finding or anatomy
    assertion: str | None  # a finding's assertion; None for anatomy
    start: int  # offsets into the report text
    end: int


@dataclass(frozen=True)
class ReportAnalysis:
    """What the full-text index stores for one image (storage.records.ReportFields)."""

    body: str  # normalised words of the report and the descriptions (core.reports.text)
    concepts: str  # concept tokens: each finding with its assertion, anatomy with its sentence's
    mentions: tuple[Mention, ...]
    has_report: bool
    analyzer: str  # ReportAnalyzer.fingerprint


@dataclass(frozen=True)
class QueryConcept:
    term: str
    kind: str
    assertion: str | None  # as the query says it ("no pleural effusion": negated); None for anatomy


@dataclass(frozen=True)
class ReportQuery:
    """A query as the report index reads it: concepts that must be mentioned, words that must occur."""

    concepts: tuple[QueryConcept, ...] = ()
    words: tuple[str, ...] = ()
    query_assertions: tuple[str, ...] = field(default=())  # of the query's findings, in order

    @property
    def empty(self) -> bool:
        return not self.concepts and not self.words


class _Sentence(NamedTuple):
    mentions: tuple[Mention, ...]  # offsets within the sentence
    concepts: tuple[str, ...]
    modifiers: tuple[tuple[int, int], ...]  # ConText's modifier phrases ("no evidence of"): offsets


def _assertion(span: Any) -> str:
    for attribute, name in PRECEDENCE:
        if getattr(span._, attribute):
            return name
    return "present"


class ReportAnalyzer:
    """Build once at the entry point (`ReportAnalyzer(vocabulary)`) and pass it in. Thread-safe."""

    def __init__(self, vocabulary: Vocabulary, cache_size: int = 200_000) -> None:
        self.vocabulary = vocabulary
        self.fingerprint = f"{ANALYZER_VERSION}:{vocabulary.fingerprint}"
        self._nlp = _pipeline(vocabulary)
        self._sentencizer = self._nlp.get_pipe("sentencizer")
        self._targets = self._nlp.get_pipe("medspacy_target_matcher")
        self._context = self._nlp.get_pipe("medspacy_context")
        self._nlp_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cache: dict[str, _Sentence] = {}
        self._cache_size = cache_size
        self._narrower = {term: tuple(vocabulary.narrower(term)) for term in vocabulary.terms}
        # the terms whose group token a mention of each term carries: itself where it has narrower ones,
        # and every term above it
        self._groups = {term: tuple(broad for broad, under in self._narrower.items()
                                    if len(under) > 1 and term in under) for term in vocabulary.terms}
        # the images of one study carry the same report and arrive together: their documents are one
        self._documents: OrderedDict[tuple[str, tuple[str | None, ...]], ReportAnalysis | None] = OrderedDict()

    # -- reports ----------------------------------------------------------------------------------------
    def analyze(self, report_text: str | None, descriptions: Sequence[str | None] = ()) -> ReportAnalysis | None:
        """The index document of one image: None when it has neither report nor description."""
        key = (report_text or "", tuple(descriptions))
        if not self._cache_size:
            return self._analyze(report_text, descriptions)
        with self._lock:
            if key in self._documents:
                self._documents.move_to_end(key)
                return self._documents[key]
        analysis = self._analyze(report_text, descriptions)
        with self._lock:
            self._documents[key] = analysis
            if len(self._documents) > RECENT_DOCUMENTS:
                self._documents.popitem(last=False)
        return analysis

    def _analyze(self, report_text: str | None, descriptions: Sequence[str | None]) -> ReportAnalysis | None:
        report = (report_text or "")[:MAX_REPORT_CHARS]
        texts = [t for t in (report, *descriptions) if t]  # as storage.reports.documents.TEXT_CONDITION
        if not texts:
            return None
        mentions: list[Mention] = []
        concepts: list[str] = []
        for start, sentence in self._sentences(report):
            for mention in sentence.mentions:
                mentions.append(mention._replace(start=mention.start + start, end=mention.end + start))
            concepts.extend(sentence.concepts)
        for description in descriptions:  # "MR KNEE": its terms are searchable as concepts too
            for _, sentence in self._sentences(description or ""):
                concepts.extend(sentence.concepts)
        return ReportAnalysis(" ".join(normalise("\n".join(texts))), " ".join(concepts),
                              tuple(mentions), bool(report.strip()), self.fingerprint)

    def _sentences(self, text: str) -> list[tuple[int, _Sentence]]:
        spans = [(start, text[start:end]) for start, end in self.sentence_spans(text)]
        with self._nlp_lock:  # spaCy's pipeline is not documented as thread-safe: one analysis at a time
            with self._lock:
                missing = list(dict.fromkeys(t for _, t in spans if t not in self._cache))
            found = {t: self._analyse(t) for t in missing}
        if found:
            with self._lock:
                if len(self._cache) + len(found) > self._cache_size:
                    self._cache.clear()
                self._cache.update(found)
        else:
            found = {}
        with self._lock:
            return [(start, found.get(t) or self._cache[t]) for start, t in spans]

    def sentence_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each sentence of `text`, as analysis splits it."""
        with self._nlp_lock:
            return [(line.start() + s.start_char, line.start() + s.end_char) for line in LINES.finditer(text)
                    for s in self._sentencizer(self._nlp.make_doc(line.group())).sents if s.text.strip()]

    def _analyse(self, sentence: str) -> _Sentence:
        doc = self._targets(self._sentencizer(self._nlp.make_doc(sentence)))
        if any(e.label_ == "FINDING" for e in doc.ents):  # ConText only where there is a finding to modify
            doc = self._context(doc)
        mentions: list[Mention] = []
        for span in doc.ents:
            rule = span._.target_rule
            term, kind = rule.metadata["term"], rule.metadata["kind"]
            assertion = _assertion(span) if kind == "finding" else None
            mentions.append(Mention(term, kind, assertion, span.start_char, span.end_char))
        asserted = sorted({m.assertion for m in mentions if m.assertion is not None})
        tokens: list[str] = []
        for mention in mentions:
            for assertion in (None, *([mention.assertion] if mention.assertion else asserted)):
                tokens.append(concept_token(mention.kind, assertion, mention.term))
                tokens.extend(group_token(mention.kind, assertion, broad)
                              for broad in self._groups.get(mention.term, ()))
        graph = getattr(doc._, "context_graph", None)
        modifiers = tuple((doc[m.modifier_span[0]:m.modifier_span[1]].start_char,
                           doc[m.modifier_span[0]:m.modifier_span[1]].end_char)
                          for m in (graph.modifiers if graph is not None else ()))
        return _Sentence(tuple(mentions), tuple(tokens), modifiers)

    # -- queries ----------------------------------------------------------------------------------------
    def parse_query(self, text: str) -> ReportQuery:
        """The concepts and words of a query; every character of it is a word or nothing, never syntax."""
        sentences = self._sentences(text[:MAX_REPORT_CHARS])
        concepts: list[QueryConcept] = []
        covered: list[tuple[int, int]] = []
        for start, sentence in sentences:
            for mention in sentence.mentions:
                concepts.append(QueryConcept(mention.term, mention.kind, mention.assertion))
                covered.append((start + mention.start, start + mention.end))
            covered.extend((start + a, start + b) for a, b in sentence.modifiers)  # "possible": not a word to find
        rest = "".join(" " if any(a <= i < b for a, b in covered) else c for i, c in enumerate(text))
        return ReportQuery(tuple(dict.fromkeys(concepts)), tuple(dict.fromkeys(normalise(rest))),
                           tuple(c.assertion for c in concepts if c.assertion))

    def query_groups(self, query: ReportQuery, assertions: Sequence[str] | None = None,
                     folded: bool = False) -> list[list[str]]:
        """The concept tokens a matching report must carry, as groups (one token of each group): a finding
        with the query's assertion (or any of `assertions`), with its narrower terms; anatomy with the
        assertion of the query's findings (or `assertions`), or any where the query has no finding.
        `folded`: a term with narrower ones is its group token (one per assertion) instead of the tokens
        of every term under it: the same reports match, ranked by the group's counts (documents of this
        analyzer carry the group tokens; older ones do not)."""
        wanted_default = [c.assertion for c in query.concepts if c.assertion] or None
        groups = []
        for concept in query.concepts:
            chosen: Sequence[str | None]
            if assertions is not None:
                chosen = list(assertions) if set(assertions) != set(ASSERTIONS) else [None]
            elif concept.assertion is not None:
                chosen = [concept.assertion]
            else:
                chosen = list(dict.fromkeys(wanted_default)) if wanted_default else [None]
            under = self._narrower.get(concept.term, (concept.term,))
            if folded and len(under) > 1:
                groups.append([group_token(concept.kind, a, concept.term) for a in chosen])
            else:
                groups.append([concept_token(concept.kind, a, term) for term in under for a in chosen])
        return groups


def _pipeline(vocabulary: Vocabulary) -> Any:
    """spaCy's blank English with medspaCy's target matcher and ConText (default rules less those the
    vocabulary drops, plus its own)."""
    import json
    from pathlib import Path

    import spacy
    from loguru import logger as loguru_logger

    loguru_logger.remove()  # PyRuSH and medspaCy log through loguru, every token at DEBUG
    import medspacy  # registers the pipes
    from medspacy.context import ConTextRule
    from medspacy.target_matcher import TargetRule

    # the target matcher's token Matcher is empty when every target is a phrase: spaCy warns on each call
    warnings.filterwarnings("ignore", message=r"\[W036\] The component 'matcher' does not have any patterns")
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    targets: Any = nlp.add_pipe("medspacy_target_matcher")
    targets.add([TargetRule(surface, term.kind.upper(), metadata={"term": term.term, "kind": term.kind})
                 for surface, term in vocabulary.surface_forms()])
    context: Any = nlp.add_pipe("medspacy_context", config={"rules": None, "allowed_types": ["FINDING"]})
    # where medspaCy's ConText itself reads its default rules (medspacy/context/context.py)
    defaults = json.loads((Path(medspacy.__file__).resolve().parents[1] / "resources" / "en" /
                           "context_rules.json").read_text())
    dropped = set(vocabulary.drop_default)
    rules = [r for r in defaults["context_rules"] if r["literal"].lower() not in dropped] + list(vocabulary.rules)
    tokens_of = nlp.make_doc
    try:
        context.add([ConTextRule.from_dict(one) for rule in rules for one in as_phrases(rule, tokens_of)])
    except (ValueError, KeyError, TypeError) as exc:
        raise VocabularyError(f"a ConText rule cannot be used: {exc}") from exc
    return nlp


MAX_PHRASES = 256  # a token pattern with more spellings than this stays a pattern


def as_phrases(rule: dict[str, Any], tokens_of: Any) -> list[dict[str, Any]]:
    """A ConText rule whose token pattern only spells words (LOWER, one word or a list of words, each
    optional or not) as the phrase rules it stands for, else the rule as it is. spaCy's token Matcher
    evaluates every pattern's predicates on every token (two thirds of ConText's cost on reports);
    its PhraseMatcher looks phrases up. The matches are the same: a spelling that is not one token to
    the tokenizer (a word with a space, "can't") could not match the pattern either, and is left out."""
    pattern = rule.get("pattern")
    if not isinstance(pattern, list) or not pattern:
        return [rule]
    spellings: list[list[str]] = [[]]
    for element in pattern:
        if not isinstance(element, dict) or set(element) - {"LOWER", "OP"} or element.get("OP", "") not in ("", "?"):
            return [rule]
        lower = element.get("LOWER")
        given = lower.get("IN") if isinstance(lower, dict) and set(lower) == {"IN"} else [lower]
        if not isinstance(given, list) or not all(isinstance(w, str) and w for w in given):
            return [rule]
        words = [str(w) for w in given if len(tokens_of(w)) == 1 and w == w.lower()]
        options: list[list[str]] = [[w] for w in words] + ([[]] if element.get("OP") == "?" else [])
        spellings = [s + o for s in spellings for o in options]
        if len(spellings) > MAX_PHRASES:
            return [rule]
    literals = sorted({" ".join(s) for s in spellings if s})
    return [{**{k: v for k, v in rule.items() if k != "pattern"}, "literal": literal} for literal in literals]
