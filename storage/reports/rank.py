"""Ranking the report index's matches by one BM25 in both databases, so that SQLite and PostgreSQL
give the same ranking of the same documents.

SQLite: FTS5's own bm25() (k1 = 1.2, b = 0.75; IDF = ln((N - n + 0.5) / (n + 0.5)), at least 1e-6;
a phrase's frequency is its count in the column it is filtered to; a document's length is its tokens
in both columns). PostgreSQL has no BM25 (ts_rank_cd weighs proximity and ranks in another order), so
the same formula is computed there from the tsvector: frequencies per weight (A: concept tokens,
D: words) counted in one pass over each match's lexemes, lengths by `report_tokens`, and N and the
total length from `report_totals`, which triggers keep (migration 0005). The GIN index still finds
the matches. Scores are compared rounded to 1e-9, ties broken by image id, so that the last bits of
two float summations cannot reorder equal documents. The tsvector keeps at most 256 positions of one
word and positions up to 16,383: in a report that repeats one word more often, or is longer,
PostgreSQL counts fewer and may rank it lower. Both engines score every match, so a query's cost grows
with its matches: queries of concept tokens alone (a finding, its anatomy, their assertions) are
ranked from the postings instead (storage/reports/topk.py), which reads the best first and stops;
bench/report_bench.py measures both.
"""

from __future__ import annotations

import math

from sqlalchemy import text
from sqlalchemy.orm import Session

from storage.reports.records import ReportMatch

FTS_TABLE = "report_fts"  # SQLite's FTS5 table (and its shadow tables report_fts_*)
K1, B = 1.2, 0.75  # FTS5's constants
DIGITS = 9  # scores are ordered rounded to this many decimals


def phrases(match: ReportMatch) -> list[tuple[str, str]]:
    """(token, column) of each FTS5 phrase of the query, in its order: concept tokens, then words."""
    return [(t, "concepts") for group in match.groups for t in group] + [(w, "body") for w in match.words]


def fts5_query(match: ReportMatch) -> str:
    """The FTS5 MATCH expression: every token quoted, each group an OR in the concepts column, each word
    in the body column, all of them required."""
    parts = [f"concepts : ({' OR '.join(f'{chr(34)}{t}{chr(34)}' for t in group)})" for group in match.groups]
    parts += [f'body : "{word}"' for word in match.words]
    return " AND ".join(parts)


def tsquery(match: ReportMatch) -> str:
    """The PostgreSQL tsquery text: concept tokens may match weight A (concepts) only, words D (body)."""
    parts = ["(" + " | ".join(f"{t}:A" for t in group) + ")" for group in match.groups]
    parts += [f"{word}:D" for word in match.words]
    return " & ".join(parts)


def sqlite_ranking(session: Session, match: ReportMatch, limit: int) -> list[tuple[int, float]]:
    rows = session.execute(text(
        f"SELECT rowid, bm25({FTS_TABLE}, 1.0, 1.0) AS s FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :q "
        f"ORDER BY round(s, {DIGITS}), rowid LIMIT :n"), {"q": fts5_query(match), "n": limit}).all()
    return [(int(i), -float(s)) for i, s in rows]  # bm25() is negative: more negative is better


def idf(documents: int, hits: int) -> float:
    idf = math.log((documents - hits + 0.5) / (hits + 0.5))
    return idf if idf > 0.0 else 1e-6


def postgres_ranking(session: Session, match: ReportMatch, limit: int) -> list[tuple[int, float]]:
    terms = [(token, "A" if column == "concepts" else "D") for token, column in phrases(match)]
    documents, tokens = session.execute(text("SELECT documents, tokens FROM report_totals")).one()
    if not documents:
        return []
    distinct = list(dict.fromkeys(terms))
    # a concept token's documents are counted in report_terms (storage/reports/postings.py); a word's here
    hits = {(token, "A"): int(n) for token, n in session.execute(text(
        "SELECT token, documents FROM report_terms WHERE token = ANY(CAST(:tokens AS text[]))"),
        {"tokens": [t for t, w in distinct if w == "A"]})}
    hits |= {term: 0 for term in distinct if term[1] == "A" and term not in hits}
    words = [term for term in distinct if term[1] == "D"]
    params: dict[str, object] = {f"q{i}": f"{t}:{w}" for i, (t, w) in enumerate(words)}
    if words:
        counts = ", ".join(f"count(*) FILTER (WHERE document @@ to_tsquery('simple', :q{i}))"
                           for i in range(len(words)))
        hits |= dict(zip(words, session.execute(text(
            f"SELECT {counts} FROM report_documents WHERE document @@ to_tsquery('simple', :any)"),
            {**params, "any": " | ".join(f"{t}:{w}" for t, w in words)}).one(), strict=True))
    params |= {"match": tsquery(match), "n": limit, "k1": K1, "b": B, "one": 1.0,
               "avgdl": float(tokens) / float(documents)}
    frequencies, terms_sql = [], []
    for i, (token, weight) in enumerate(terms):
        params |= {f"t{i}": token, f"w{i}": weight, f"idf{i}": idf(int(documents), int(hits[(token, weight)]))}
        frequencies.append(f"count(*) FILTER (WHERE u.lexeme = :t{i} AND w = :w{i})::float8 AS f{i}")
        terms_sql.append(f":idf{i} * ((f.f{i} * (:k1 + :one)) / (f.f{i} + :k1 * (:one - :b + :b * l.dl / :avgdl)))")
    params["lexemes"] = [token for token, _ in distinct]
    score = " + ".join(terms_sql)  # summed in the query's order, as FTS5 sums its phrases
    rows = session.execute(text(  # one pass over each matching document's lexemes counts every term
        f"SELECT image_id, s FROM (SELECT d.image_id, {score} AS s FROM report_documents d, "
        "LATERAL (SELECT report_tokens(d.body, d.concepts)::float8 AS dl) l, "
        f"LATERAL (SELECT {', '.join(frequencies)} FROM unnest(d.document) AS u, unnest(u.weights) AS w "
        "WHERE u.lexeme = ANY(CAST(:lexemes AS text[]))) f "
        "WHERE d.document @@ to_tsquery('simple', :match)) m "
        f"ORDER BY round(s::numeric, {DIGITS}) DESC, image_id LIMIT :n"), params).all()
    return [(int(i), float(s)) for i, s in rows]


def postgres_totals_problem(session: Session) -> str | None:
    """What is wrong with report_totals (that BM25 reads), if anything."""
    kept = session.execute(text("SELECT documents, tokens FROM report_totals")).one()
    actual = session.execute(text("SELECT count(*), coalesce(sum(report_tokens(body, concepts)), 0) "
                                  "FROM report_documents")).one()
    if tuple(map(int, kept)) != tuple(map(int, actual)):
        return (f"the report index's totals ({kept[0]} documents, {kept[1]} tokens) disagree with its documents "
                f"({actual[0]}, {actual[1]}): verify --repair recounts them")
    return None


def recount_postgres_totals(session: Session) -> None:
    session.execute(text("UPDATE report_totals SET (documents, tokens) = (SELECT count(*), coalesce(sum("
                         "report_tokens(body, concepts)), 0) FROM report_documents)"))
