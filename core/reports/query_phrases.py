"""Phrases like the text queries users send ("small right pleural effusion", "CT of the liver with a
mass"), made from a data file of templates, modalities and sides (core/reports/query_phrases.json) over
the report vocabulary's findings and anatomy (core/reports/vocabulary.csv, with a site's terms). The
indexer encodes them with the index's own text encoder when it builds an index, so that the index's
search effort is tuned for text queries too (storage/vectors/build.py), not only for image queries.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from core.errors import MedsearchError
from core.reports.vocabulary import Vocabulary, load_vocabulary

PHRASES = Path(__file__).parent / "query_phrases.json"
FIELDS = ("modalities", "sides", "sizes", "templates")


def load_templates(path: Path = PHRASES) -> dict[str, list[str]]:
    """The data file's lists. Raises MedsearchError naming the file and the field that is wrong."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedsearchError(f"{path}: cannot read the query phrases: {exc}") from exc
    for name in FIELDS:
        value = data.get(name) if isinstance(data, dict) else None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise MedsearchError(f"{path}: {name!r} must be a list of non-empty strings")
    return {name: list(data[name]) for name in FIELDS}


def query_phrases(count: int = 400, seed: int = 0, vocabulary: Vocabulary | None = None,
                  path: Path = PHRASES) -> list[str]:
    """`count` distinct phrases (fewer where the vocabulary cannot make so many), the same for the same
    seed and files."""
    lists = load_templates(path)
    vocabulary = vocabulary or load_vocabulary()
    findings = sorted(t.term for t in vocabulary.terms.values() if t.kind == "finding")
    anatomy = sorted(t.term for t in vocabulary.terms.values() if t.kind == "anatomy")
    if not findings or not anatomy:
        raise MedsearchError("the report vocabulary has no findings or no anatomy to make query phrases from")
    rng = random.Random(seed)
    found: dict[str, None] = {}
    for _ in range(count * 20):
        if len(found) >= count:
            break
        phrase = rng.choice(lists["templates"]).format(
            finding=rng.choice(findings), anatomy=rng.choice(anatomy), modality=rng.choice(lists["modalities"]),
            side=rng.choice(lists["sides"]), size=rng.choice(lists["sizes"]))
        found[phrase] = None
    return list(found)
