"""The target vocabulary of report analysis: findings (which carry an assertion) and anatomy, each a
canonical term with its synonyms and, optionally, a broader term (a query for "effusion" also finds
"pleural effusion"). It ships as core/reports/vocabulary.csv; a site adds terms or synonyms with a CSV of
the same columns (MEDSEARCH_REPORT_VOCABULARY). A term a site file names again keeps the shipped
synonyms and gains the site's."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from core.errors import MedsearchError

KINDS = ("finding", "anatomy")
COLUMNS = ("kind", "term", "synonyms", "parent")


class VocabularyError(MedsearchError):
    """A vocabulary or ConText rules file that cannot be used: names the file, line and column."""


@dataclass(frozen=True)
class Term:
    kind: str  # finding or anatomy
    term: str  # canonical, lower case
    synonyms: tuple[str, ...] = ()
    parent: str | None = None


@dataclass(frozen=True)
class Vocabulary:
    terms: dict[str, Term] = field(default_factory=dict)  # canonical -> term
    rules: tuple[dict[str, object], ...] = ()  # extra ConText rules (medspaCy's JSON form)
    drop_default: tuple[str, ...] = ()  # medspaCy default rule literals not used

    def surface_forms(self) -> Iterable[tuple[str, Term]]:
        for term in self.terms.values():
            yield term.term, term
            for synonym in term.synonyms:
                yield synonym, term

    def narrower(self, term: str) -> list[str]:
        """The term and every term under it (its children, theirs...), the term first."""
        found, queue = [term], [term]
        while queue:
            parent = queue.pop()
            for child in self.terms.values():
                if child.parent == parent and child.term not in found:
                    found.append(child.term)
                    queue.append(child.term)
        return found

    @property
    def fingerprint(self) -> str:
        """Changes whenever what the analysis produces could change (terms, rules)."""
        described = json.dumps([[t.kind, t.term, sorted(t.synonyms), t.parent] for t in sorted(
            self.terms.values(), key=lambda t: t.term)] + [list(self.rules), sorted(self.drop_default)],
            sort_keys=True, default=str)
        return hashlib.sha256(described.encode()).hexdigest()[:16]


def _parse(text: str, where: str, into: dict[str, Term]) -> None:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("kind", "term") if c not in (reader.fieldnames or [])]
    if missing:
        raise VocabularyError(f"{where}: no {' and '.join(missing)} column (columns: kind, term, synonyms, parent)")
    for line, row in enumerate(reader, start=2):
        kind, term = (row.get("kind") or "").strip().lower(), (row.get("term") or "").strip().lower()
        if kind not in KINDS:
            raise VocabularyError(f"{where}, line {line}, column kind: {kind!r} is not one of {', '.join(KINDS)}")
        if not term:
            raise VocabularyError(f"{where}, line {line}, column term: empty")
        synonyms = tuple(s.strip().lower() for s in (row.get("synonyms") or "").split("|") if s.strip())
        parent = (row.get("parent") or "").strip().lower() or None
        known = into.get(term)
        if known is not None:
            if known.kind != kind:
                raise VocabularyError(f"{where}, line {line}: {term!r} is already a {known.kind} term")
            synonyms = tuple(dict.fromkeys([*known.synonyms, *synonyms]))
            parent = parent or known.parent
        into[term] = Term(kind, term, synonyms, parent)


def _rules(text: str, where: str) -> tuple[tuple[dict[str, object], ...], tuple[str, ...]]:
    try:
        loaded = json.loads(text)
        rules = tuple(loaded.get("context_rules", []))
        drop = tuple(str(d).lower() for d in loaded.get("drop_default", []))
    except (ValueError, AttributeError, TypeError) as exc:
        raise VocabularyError(f"{where}: not a ConText rules file ({{\"context_rules\": [...]}}): {exc}") from exc
    for number, rule in enumerate(rules):
        if not isinstance(rule, dict) or not {"literal", "category"} <= set(rule):
            raise VocabularyError(f"{where}: context_rules[{number}] needs a literal and a category")
    return rules, drop


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabularyError(f"{path}: cannot be read ({exc})") from exc


def load_vocabulary(site_terms: Path | None = None, site_rules: Path | None = None) -> Vocabulary:
    """The shipped vocabulary and ConText rules, extended by a site's files. Raises VocabularyError."""
    package = resources.files("core.reports")
    terms: dict[str, Term] = {}
    _parse(package.joinpath("vocabulary.csv").read_text(), "core/reports/vocabulary.csv", terms)
    if site_terms is not None:
        _parse(_read(site_terms), str(site_terms), terms)
    for term in terms.values():
        if term.parent is not None and term.parent not in terms:
            raise VocabularyError(f"vocabulary: the parent {term.parent!r} of {term.term!r} is not a term")
    rules, drop = _rules(package.joinpath("context_rules.json").read_text(), "core/reports/context_rules.json")
    if site_rules is not None:
        more, more_drop = _rules(_read(site_rules), str(site_rules))
        rules, drop = rules + more, drop + more_drop
    return Vocabulary(terms, rules, drop)
