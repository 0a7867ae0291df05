"""The best `limit` matches of a report query of one group of concept tokens (a finding with its
assertion, and its narrower findings), without scoring every match.

FTS5 and PostgreSQL score every matching document before they sort (a common finding matches a fifth
of an archive: 200,000 scores at 1M reports). Here the postings (storage/report_postings.py) are read
best first and, as in the threshold algorithm (Fagin, Lotem and Naor, PODS 2001), reading stops as soon
as no unread document can beat the `limit`-th score found:

- BM25's share of one term in a document, idf * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)), rises
  with tf and falls with dl, so a term's postings of one tf, read by dl ascending, come best first, and
  the runs of its tf values merged by that share give its documents best first;
- the group's largest term is read so; its other terms (narrower findings, rare beside it) are read
  whole first, so that a document not read yet can gain at most the largest term's next share; those
  read that may also carry the largest term further down are checked in their documents before the
  answer ("random access");
- where another term is not rare (over 1/RARE of the largest's documents and twice the limit), or the
  query has several groups or words, a threshold summing several terms' next shares stays above the
  scores found until nearly every posting is read: the engine ranks those (`None`), its own
  intersection of posting lists being faster there;
- the scores are FTS5's bm25 to the bit (the same formula, summed over the query's phrases in their
  order, the counts from report_terms), so the ranking is the one FTS5 gives, and the same in SQLite
  and PostgreSQL.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from storage.models import ReportTermRow
from storage.report_postings import SENTINEL
from storage.report_rank import DIGITS, K1, B, idf
from storage.report_records import ReportMatch

MARGIN = 2e-9  # the limit-th score must beat the threshold by more than the rounding of the order
FIRST_PAGE, LAST_PAGE = 64, 4096  # postings read per query of one run, doubling as a run is read
RARE = 32  # a group's other terms are read whole where each has at most 1/RARE of its largest's documents

FIRST = text("SELECT dl, image_id FROM report_postings WHERE term_id = :t AND tf = :f "
             "ORDER BY dl, image_id LIMIT :n")
NEXT = text("SELECT dl, image_id FROM report_postings WHERE term_id = :t AND tf = :f "
            "AND (dl, image_id) > (:dl, :i) ORDER BY dl, image_id LIMIT :n")
CONCEPTS = text("SELECT image_id, concepts FROM report_documents WHERE image_id IN (SELECT value FROM json_each(:ids))")
CONCEPTS_PG = text("SELECT image_id, concepts FROM report_documents WHERE image_id = ANY(CAST(:ids AS integer[]))")
LOWER_TF = text("SELECT tf FROM report_postings WHERE term_id = :t AND tf < :below ORDER BY tf DESC LIMIT 1")


@dataclass
class _Run:
    """One term's postings of one tf, best first."""

    token: str
    term: int
    tf: int
    rows: list[tuple[int, int]] = field(default_factory=list)  # (dl, image id), the unread rest of a page
    at: int = 0
    page: int = FIRST_PAGE
    done: bool = False

    def head(self, session: Session) -> tuple[int, int] | None:
        if self.at < len(self.rows):
            return self.rows[self.at]
        if self.done:
            return None
        last = self.rows[-1] if self.rows else None
        params = {"t": self.term, "f": self.tf, "n": self.page}
        self.rows = [(int(d), int(i)) for d, i in session.execute(
            FIRST if last is None else NEXT, params if last is None else params | {"dl": last[0], "i": last[1]})]
        self.at, self.page = 0, min(self.page * 2, LAST_PAGE)
        self.done = len(self.rows) < params["n"]
        return self.rows[0] if self.rows else None


class _Scorer:
    """BM25 as FTS5's bm25() computes it, for one query."""

    def __init__(self, phrases: list[str], documents: int, tokens: int, hits: dict[str, int]) -> None:
        self.phrases = phrases
        self.avgdl = float(tokens) / float(documents)
        self.idf = [idf(documents, hits.get(token, 0)) for token in phrases]

    def score(self, counts: dict[str, int], dl: int) -> float:
        total = 0.0
        for token, weight in zip(self.phrases, self.idf, strict=True):
            f = float(counts.get(token, 0))
            total += weight * ((f * (K1 + 1.0)) / (f + K1 * (1 - B + B * float(dl) / self.avgdl)))
        return total

    def share(self, token: str, tf: int, dl: int) -> float:
        """The score a document gets from one term (every phrase of it) alone: an upper bound of the
        term's part in any document of a lower tf or a greater length."""
        return self.score({token: tf}, dl)


def ranks_from_postings(match: ReportMatch) -> bool:
    """Whether topk_ranking ranks this query (one group of concept tokens, no words)."""
    return not match.words and len(match.groups) == 1


def topk_ranking(session: Session, match: ReportMatch, limit: int) -> list[tuple[int, float]] | None:
    """The first `limit` matches by BM25 (best first, ties by image id); None for a query this does not
    rank (see the module's docstring): the engine ranks it."""
    if not ranks_from_postings(match):
        return None
    phrases = list(match.groups[0])
    counts = {token: (int(i), int(n), int(t)) for i, token, n, t in session.execute(select(
        ReportTermRow.id, ReportTermRow.token, ReportTermRow.documents, ReportTermRow.tokens).where(
        ReportTermRow.token.in_(set(phrases) | {SENTINEL})))}
    documents, tokens = counts.get(SENTINEL, (0, 0, 0))[1:]
    present = {token: c for token, c in counts.items() if token != SENTINEL and c[1] > 0}
    if not documents or not present:
        return []
    scorer = _Scorer(phrases, documents, tokens, {token: c[1] for token, c in present.items()})
    # one term is read best first; the group's others (its narrower findings) are read whole first, so
    # that they add nothing to the threshold: where they are not rare beside it the engine ranks
    driven = max(present, key=lambda t: (present[t][1], t))
    small = [t for t in present if t != driven]
    if any(present[t][1] > max(2 * limit, present[driven][1] // RARE) for t in small):
        return None
    seen: dict[int, _Seen] = {}
    for token in small:
        for run in _runs(session, token, present[token][0]):
            while (head := run.head(session)) is not None:
                run.at += 1
                seen.setdefault(head[1], _Seen(head[0])).tf[token] = run.tf
    lower = {i: scorer.score(d.tf, d.dl) for i, d in seen.items()}  # exact but for the driven term
    runs = _runs(session, driven, present[driven][0])
    heap: list[tuple[float, int, int]] = []  # (-share, image id, run)

    def push(index: int) -> None:
        run = runs[index]
        if (head := run.head(session)) is not None:
            heapq.heappush(heap, (-scorer.share(run.token, run.tf, head[0]), head[1], index))

    for index in range(len(runs)):
        push(index)
    batch = max(16, min(limit // 2, 512))
    while True:
        for _ in range(batch):
            if not heap:
                break
            _, image_id, index = heapq.heappop(heap)
            run = runs[index]
            found = seen.setdefault(image_id, _Seen(run.rows[run.at][0]))
            found.tf[driven] = run.tf
            lower[image_id] = scorer.score(found.tf, found.dl)
            run.at += 1
            push(index)
        if not heap:  # every posting read: every score is known
            return _ranked(lower, limit)
        if len(lower) < limit:
            continue
        unread = -heap[0][0]  # the most the driven term adds to a document not read in it yet
        kth = heapq.nlargest(limit, lower.values())[-1]
        if kth - unread <= MARGIN:
            continue
        # a narrower term's document may also carry the driven term, further down its postings: its
        # count is read from the document where that could carry it to the first `limit`
        open_ = [i for i, d in seen.items() if driven not in d.tf and lower[i] + unread > kth - MARGIN]
        _random_access(session, [driven], seen, open_)
        lower |= {i: scorer.score(seen[i].tf, seen[i].dl) for i in open_}
        return _ranked(lower, limit)


@dataclass
class _Seen:
    dl: int
    tf: dict[str, int] = field(default_factory=dict)  # the counts known: of every term read, 0 if not in it


def _ranked(scores: dict[int, float], limit: int) -> list[tuple[int, float]]:
    return heapq.nsmallest(limit, scores.items(), key=lambda pair: (-round(pair[1], DIGITS), pair[0]))


def _runs(session: Session, token: str, term: int) -> list[_Run]:
    return [_Run(token, term, tf) for tf in _tf_values(session, term)]


def _tf_values(session: Session, term: int) -> list[int]:
    """The tf values a term's postings have, highest first (one index seek each)."""
    values: list[int] = []
    below = 2**31
    while (tf := session.scalar(LOWER_TF, {"t": term, "below": below})) is not None:
        values.append(int(tf))
        below = int(tf)
    return values


def _random_access(session: Session, phrases: list[str], seen: dict[int, _Seen], ids: list[int]) -> None:
    """The counts of the query's terms in the documents `ids`, read from their concept tokens."""
    wanted = list(dict.fromkeys(phrases))
    postgres = session.get_bind().dialect.name == "postgresql"
    for start in range(0, len(ids), 5000):
        chunk = ids[start:start + 5000]
        rows = session.execute(CONCEPTS_PG if postgres else CONCEPTS, {"ids": chunk if postgres else json.dumps(chunk)})
        for image_id, concepts in rows:
            words = str(concepts).split()
            seen[int(image_id)].tf.update({t: words.count(t) for t in wanted})
