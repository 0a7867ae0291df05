"""Report text as the search engine reads it: normalised words (text.py), the target vocabulary
(vocabulary.py), medspaCy's finding and assertion analysis of reports and queries (analyzer.py), and the
phrases an index build tunes text queries on (query_phrases.py).

Inside core: may import core.errors; never core.imaging, core.model, core.maps, core.sources or core.settings.
"""

from functools import lru_cache
from pathlib import Path

from core.reports.analyzer import Mention, QueryConcept, ReportAnalysis, ReportAnalyzer, ReportQuery
from core.reports.text import ASSERTIONS
from core.reports.vocabulary import Vocabulary, VocabularyError, load_vocabulary

__all__ = ["ASSERTIONS", "Mention", "QueryConcept", "ReportAnalysis", "ReportAnalyzer", "ReportQuery", "Vocabulary",
           "VocabularyError", "load_vocabulary", "report_analyzer"]


@lru_cache(maxsize=4)
def report_analyzer(site_terms: Path | None = None, site_rules: Path | None = None) -> ReportAnalyzer:
    """The analyzer of the shipped vocabulary and rules and a site's (MEDSEARCH_REPORT_VOCABULARY,
    MEDSEARCH_REPORT_CONTEXT_RULES), built once per process: its spaCy pipeline takes seconds to build.
    Raises VocabularyError."""
    return ReportAnalyzer(load_vocabulary(site_terms, site_rules))
