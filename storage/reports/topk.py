"""The best `limit` matches of a report query of one group of concept tokens (a finding with its
assertion, and its narrower findings), without scoring every match.

FTS5 and PostgreSQL score every matching document before they sort (a common finding matches a fifth
of an archive: 200,000 scores at 1M reports). Here the postings (storage/reports/postings.py) are read
best first and, as in the threshold algorithm (Fagin, Lotem and Naor, PODS 2001), reading stops as soon
as no unread document can beat the `limit`-th score found:

- BM25's share of one term in a document, idf * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)), rises
  with tf and falls with dl, so a term's postings of one tf, read by dl ascending, come best first, and
  the runs of its tf values merged by that share give its documents best first;
- the group's largest term is read so: the first page of each run, then as a merge of the runs, the
  best one up to the length where its share falls to the next run's (BM25 solved for dl), as many
  postings as the first `limit` still lack, so that no page reads far past what the answer needs;
- its other terms (narrower findings, rare beside it) are read whole first, so that a document not
  read yet can gain at most the largest term's next share; those read that may also carry the largest
  term further down are checked in their documents before the answer ("random access");
- where another term is not rare (over 1/RARE of the largest's documents and twice the limit), or the
  query has several groups or words, a threshold summing several terms' next shares stays above the
  scores found until nearly every posting is read: the engine ranks those (`None`), its own
  intersection of posting lists being faster there;
- the scores are FTS5's bm25 to the bit (the same formula, summed over the query's phrases in their
  order, the counts from report_terms), so the ranking is the one FTS5 gives, and the same in SQLite
  and PostgreSQL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from storage.reports.postings import SENTINEL
from storage.reports.rank import DIGITS, K1, B, idf
from storage.reports.records import ReportMatch
from storage.sql.models import ReportTermRow

MARGIN = 2e-9  # the limit-th score must beat the threshold by more than the rounding of the order
RARE = 32  # a group's other terms are read whole where each has at most 1/RARE of its largest's documents
LAST_PAGE = 8192  # postings read per query of one run at most

RUN = ("SELECT 0, dl, image_id FROM (SELECT dl, image_id FROM report_postings WHERE term_id = {m} AND tf = {m} "
       "AND (dl, image_id) > ({m}, {m}) AND dl <= {m} ORDER BY dl, image_id LIMIT {m}) page")  # the row value is a
# range on the primary key in both databases; up to a cutoff, the next posting past it comes too (its bound)
PAST = (" UNION ALL SELECT 1, dl, image_id FROM (SELECT dl, image_id FROM report_postings WHERE term_id = {m} "
        "AND tf = {m} AND (dl, image_id) > ({m}, {m}) AND dl > {m} ORDER BY dl, image_id LIMIT 1) past")
NO_CUTOFF = 2**31 - 1  # a dl no document reaches
TF_VALUES = ("WITH RECURSIVE below(tf) AS (SELECT max(tf) FROM report_postings WHERE term_id = {m} UNION ALL "
             "SELECT (SELECT max(tf) FROM report_postings WHERE term_id = {m} AND tf < below.tf) FROM below "
             "WHERE below.tf IS NOT NULL) SELECT tf FROM below WHERE tf IS NOT NULL ORDER BY tf DESC")  # a seek a value
CONCEPTS = text("SELECT image_id, concepts FROM report_documents WHERE image_id IN (SELECT value FROM json_each(:ids))")
CONCEPTS_PG = text("SELECT image_id, concepts FROM report_documents WHERE image_id = ANY(CAST(:ids AS integer[]))")


class _Reader:
    """The postings read through the session's own DB-API connection (a page of a run is thousands of
    rows: read as plain tuples)."""

    def __init__(self, session: Session) -> None:
        connection = session.connection()
        self.mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        self.cursor = connection.connection.cursor()
        self.run_sql, self.tf_sql = RUN.format(m=self.mark), TF_VALUES.format(m=self.mark)
        self.cutoff_sql = self.run_sql + PAST.format(m=self.mark)

    def page(self, term: int, tf: int, after: tuple[int, int], upto: int, n: int) -> tuple[np.ndarray, int | None]:
        """Up to `n` postings after `after` of lengths up to `upto` (rows of dl, image id), and the length
        of the first posting past `upto` (None: there is none, or no cutoff)."""
        if upto == NO_CUTOFF:
            self.cursor.execute(self.run_sql, (term, tf, after[0], after[1], upto, n))
        else:
            self.cursor.execute(self.cutoff_sql, (term, tf, after[0], after[1], upto, n, term, tf, after[0], after[1],
                                                  upto))
        rows = np.fromiter(chain.from_iterable(self.cursor.fetchall()), dtype=np.int64).reshape(-1, 3)
        past = rows[rows[:, 0] == 1]
        return rows[rows[:, 0] == 0, 1:], int(past[0, 1]) if len(past) else None

    def terms(self, tokens: set[str]) -> dict[str, tuple[int, int, int]]:
        """token -> (its id, documents, tokens) in report_terms, for those of `tokens` it has."""
        marks = ", ".join([self.mark] * len(tokens))
        self.cursor.execute(f"SELECT id, token, documents, tokens FROM {ReportTermRow.__tablename__} "
                            f"WHERE token IN ({marks})", tuple(tokens))
        return {str(token): (int(i), int(n), int(t)) for i, token, n, t in self.cursor.fetchall()}

    def tf_values(self, term: int) -> list[int]:
        """The tf values a term's postings have, highest first (one round trip: a loose index scan)."""
        self.cursor.execute(self.tf_sql, (term, term))
        return [int(row[0]) for row in self.cursor.fetchall()]


@dataclass
class _Run:
    """One term's postings of one tf, best first (dl ascending, then image id), read page by page."""

    token: str
    term: int
    tf: int
    after: tuple[int, int] = (-1, -1)
    done: bool = False
    bound: float = float("inf")  # no unread posting has a larger share

    def read(self, reader: _Reader, scorer: _Scorer, n: int, upto: int = NO_CUTOFF
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next `n` postings at most, of lengths up to `upto`: (image ids, lengths, shares)."""
        rows, past = reader.page(self.term, self.tf, self.after, upto, n)
        if len(rows):
            self.after = (int(rows[-1, 0]), int(rows[-1, 1]))
        shares = scorer.shares(self.token, self.tf, rows[:, 0])
        if len(rows) == n:
            self.bound = float(shares[-1])
        elif past is None:
            self.done, self.bound = True, 0.0
        else:  # every posting left is past `upto`, the first of them this long
            self.bound = float(scorer.shares(self.token, self.tf, np.array([past]))[0])
        return rows[:, 1], rows[:, 0], shares


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

    def shares(self, token: str, tf: int, dl: np.ndarray) -> np.ndarray:
        """`score` of documents carrying only `token`, `tf` times, of lengths `dl` (the same operations in
        the same order, so the same bits: the other phrases add exact zeros)."""
        total = np.zeros(len(dl))
        f = float(tf)
        for phrase, weight in zip(self.phrases, self.idf, strict=True):
            if phrase == token:
                total = total + weight * ((f * (K1 + 1.0)) / (f + K1 * (1 - B + B * dl / self.avgdl)))
        return total

    def cutoff(self, token: str, tf: int, floor: float) -> int:
        """The largest dl whose share of `token`, `tf` times, is above `floor` (-1: none is)."""
        if floor <= 0.0:
            return NO_CUTOFF
        weight = sum(w for phrase, w in zip(self.phrases, self.idf, strict=True) if phrase == token)
        f = float(tf)
        solved = ((weight * f * (K1 + 1.0) / floor - f) / K1 - 1.0 + B) * self.avgdl / B  # share(dl) = floor
        dl = int(min(max(math.floor(solved), -1), NO_CUTOFF - 1))

        def above(n: int) -> bool:  # decided by `shares`, as the documents' scores are
            return bool(self.shares(token, tf, np.array([n]))[0] > floor)

        while dl + 1 < NO_CUTOFF and above(dl + 1):  # the rounding of the solution: a step or two at most
            dl += 1
        while dl >= 0 and not above(dl):
            dl -= 1
        return dl


def topk_ranking(session: Session, match: ReportMatch, limit: int) -> list[tuple[int, float]] | None:
    """The first `limit` matches by BM25 (best first, ties by image id); None for a query this does not
    rank (see the module's docstring): the engine ranks it."""
    if match.words or len(match.groups) != 1:  # words, or several groups: the engine's
        return None
    phrases = list(match.groups[0])
    reader = _Reader(session)
    counts = reader.terms(set(phrases) | {SENTINEL})
    documents, tokens = counts.get(SENTINEL, (0, 0, 0))[1:]
    present = {token: c for token, c in counts.items() if token != SENTINEL and c[1] > 0}
    if not documents or not present:
        return []
    scorer = _Scorer(phrases, documents, tokens, {token: c[1] for token, c in present.items()})
    # one term is read best first; the group's others (its narrower findings) are read whole first, so
    # that they add nothing to the threshold: where they are not rare beside it the engine ranks
    driven = max(present, key=lambda t: (present[t][1], t))
    if any(present[t][1] > max(2 * limit, present[driven][1] // RARE) for t in present if t != driven):
        return None
    seen: dict[int, _Seen] = {}  # documents of the other terms, with their counts known so far
    for token in (t for t in present if t != driven):
        for tf in reader.tf_values(present[token][0]):
            run = _Run(token, present[token][0], tf)
            while not run.done:
                ids, lengths, _ = run.read(reader, scorer, LAST_PAGE)
                for image_id, dl in zip(ids.tolist(), lengths.tolist(), strict=True):
                    seen.setdefault(image_id, _Seen(dl)).tf[token] = tf
    runs = [_Run(driven, present[driven][0], tf) for tf in reader.tf_values(present[driven][0])]
    read_ids: list[np.ndarray] = []
    read_shares: list[np.ndarray] = []

    def read(run: _Run, n: int, upto: int = NO_CUTOFF) -> None:
        ids, _, shares = run.read(reader, scorer, n, upto)
        read_ids.append(ids)
        read_shares.append(shares)
        for image_id in ids[np.isin(ids, list(seen))].tolist() if seen else ():
            seen[image_id].tf[driven] = run.tf

    for run in runs:
        read(run, max(32, limit // 4))
    kth = -float("inf")
    while True:
        ids, scores = _candidates(scorer, seen, read_ids, read_shares)
        if len(scores) >= limit:
            kth = float(np.partition(scores, len(scores) - limit)[len(scores) - limit])
        unread = max((run.bound for run in runs if not run.done), default=0.0)  # the most a document can gain
        if unread == 0.0 or (len(scores) >= limit and kth - unread > MARGIN):
            break
        # a merge of the runs: the best run, while it stays the best and beats the limit-th score, as many
        # postings as the first `limit` still lack (those found above every unread posting are certain).
        # Each read lowers that run's bound, so the loop ends.
        ahead = sorted((run for run in runs if not run.done), key=lambda r: -r.bound)
        floor = max(ahead[1].bound if len(ahead) > 1 else 0.0, kth - 2 * MARGIN)
        lacking = limit - int(np.count_nonzero(scores > ahead[0].bound))
        read(ahead[0], min(max(32, lacking), LAST_PAGE),
             scorer.cutoff(driven, ahead[0].tf, floor) if floor < ahead[0].bound else NO_CUTOFF)
    # a narrower term's document may also carry the driven term further down its postings: its count
    # is read from the document where that could carry it into the first `limit`
    open_ = [i for i, d in seen.items() if driven not in d.tf and unread > 0.0 and
             scorer.score(d.tf, d.dl) + unread > kth - MARGIN]
    if open_:
        _random_access(session, [driven], seen, open_)
        ids, scores = _candidates(scorer, seen, read_ids, read_shares)
    near = scores >= (np.partition(scores, len(scores) - limit)[len(scores) - limit] if len(scores) > limit
                      else -np.inf) - 1e-6  # the exact order among the best, decided as the engines do
    ids, scores = ids[near], scores[near]
    order = np.lexsort((ids, -np.round(scores, DIGITS)))[:limit]
    return list(zip(ids[order].tolist(), scores[order].tolist(), strict=True))


@dataclass
class _Seen:
    dl: int
    tf: dict[str, int] = field(default_factory=dict)  # the counts known (absent: 0, or not read yet)


def _candidates(scorer: _Scorer, seen: dict[int, _Seen], read_ids: list[np.ndarray], read_shares: list[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every document read so far with its score as known: the driven term's share alone, or, for the
    other terms' documents, the score of the counts known."""
    ids = np.concatenate(read_ids) if read_ids else np.empty(0, dtype=np.int64)
    shares = np.concatenate(read_shares) if read_shares else np.empty(0)
    if seen:
        keep = ~np.isin(ids, np.fromiter(seen, dtype=np.int64, count=len(seen)))
        ids = np.concatenate([ids[keep], np.fromiter(seen, dtype=np.int64, count=len(seen))])
        shares = np.concatenate([shares[keep], [scorer.score(d.tf, d.dl) for d in seen.values()]])
    return ids, shares


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
