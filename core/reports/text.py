"""The words of a report as both full-text engines are fed them: one normalisation, in one place.

SQLite FTS5 and PostgreSQL stem differently (FTS5's `porter` is Porter's 1980 stemmer, PostgreSQL's
`english` is Snowball's), so they would match and rank different words. Instead medsearch hands both
the same stream of normalised words (lower case, accents removed, English stop words dropped, the
Snowball English stem) and lets each engine index and rank it without stemming of its own
(FTS5 `unicode61`, PostgreSQL `simple`). The same function marks the matched words of a snippet, so
a highlighted word is exactly a word the engine matched.

Concept tokens carry what the words cannot: which finding a report mentions with which assertion
(`concept_token`), in a column of their own. They are letters and digits only, so they are never
syntax to either engine.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

import snowballstemmer

# Snowball's English stop words, less none: negation words are stop words here, since assertion is
# carried by concept tokens and not by the word "no"
_STOP = """
a about above after again against all am an and any are as at be because been before being below between both but
by can cannot could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves also may might must shall s t
"""
STOP_WORDS = frozenset(_STOP.split())
WORD = re.compile(r"[a-z0-9]+")
MAX_WORD = 40  # longer runs of letters are not words (base64, hashes): not indexed
CONCEPT_CHARS = re.compile(r"[^a-z0-9]")

ASSERTIONS = ("present", "negated", "uncertain", "historical", "family", "hypothetical")
ASSERTION_CODES = {"present": "p", "negated": "n", "uncertain": "u", "historical": "h", "family": "f",
                   "hypothetical": "y"}
ANY = "z"  # the concept token that any assertion carries


@lru_cache(maxsize=1)
def _stemmer() -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)).lower()
    return base if len(base) == 1 else " "  # a ligature or a character that lowers to two: not a word character


def fold(text: str) -> str:
    """Lower case without accents, character for character (so offsets into it are offsets into `text`)."""
    if text.isascii():
        return text.lower()
    return "".join(_fold_char(c) for c in text)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return str(_stemmer().stemWord(word))


def words(text: str) -> Iterator[tuple[str, int, int]]:
    """(normalised word, start, end) for each indexed word of `text`, with its offsets in `text`."""
    for match in WORD.finditer(fold(text)):
        word = match.group()
        if len(word) <= MAX_WORD and word not in STOP_WORDS:
            yield stem(word), match.start(), match.end()


def normalise(text: str) -> list[str]:
    return [word for word, _, _ in words(text)]


def slug(term: str) -> str:
    return CONCEPT_CHARS.sub("", fold(term))


def concept_token(kind: str, assertion: str | None, term: str) -> str:
    """The token of a finding (kind 'finding') or anatomy term mentioned with an assertion (None: any)."""
    code = ASSERTION_CODES[assertion] if assertion is not None else ANY
    return f"{kind[0]}9{code}{slug(term)}"


def group_token(kind: str, assertion: str | None, term: str) -> str:
    """The token of a term that has narrower ones, carried by every mention of it or of any term under it
    ("effusion" for a pleural effusion too), with the mention's assertion (None: any): a query for the
    broad term is one token, which the report index ranks by its postings (storage/reports/topk.py)."""
    code = ASSERTION_CODES[assertion] if assertion is not None else ANY
    return f"{kind[0]}8{code}{slug(term)}"
