"""The report index's concept postings: for each document, its count of each concept token (`tf`) beside
its length in tokens (`dl`, as BM25 counts it: words plus concept tokens), in a table ordered by
(term, tf, dl, image id), so that a term's documents can be read best first by BM25 and a query's best
matches ranked without scoring every match (storage/reports/topk.py). Every document also has one row
for the token '' (SENTINEL), so that report_terms (counts added by the writer, taken away by a trigger:
migration 0006) holds N and the documents' total length beside each token's document count: BM25's
IDF and average length in one read.

Written in the transactions that write the documents (`write_postings`); they leave with their
document (a cascading foreign key, whose deletes the trigger counts). The same table and the same
arithmetic serve SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.sql.models import ReportDocumentRow, ReportPostingRow, ReportTermRow

SENTINEL = ""  # the token every document carries: its counts are N and the total length


def document_length(body: str, concepts: str) -> int:
    """A document's length as FTS5 counts it (both columns; their tokens are space-separated)."""
    return len(body.split()) + len(concepts.split())


def term_ids(connection: Connection, tokens: Iterable[str]) -> dict[str, int]:
    """The ids of `tokens`, creating the missing terms (with zero counts)."""
    wanted = sorted(set(tokens))
    if not wanted:
        return {}
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(ReportTermRow).values(
        [{"token": t, "documents": 0, "tokens": 0} for t in wanted]).on_conflict_do_nothing(index_elements=["token"]))
    return {token: int(i) for i, token in connection.execute(
        select(ReportTermRow.id, ReportTermRow.token).where(ReportTermRow.token.in_(wanted)))}


def write_postings(connection: Connection, documents: Sequence[tuple[int, str, str]]) -> None:
    """The postings of freshly written documents (image id, body, concepts) and their terms' counts, in the
    caller's transaction (a delete's counts are taken away by a trigger, migration 0006)."""
    rows: list[tuple[str, int, int, int]] = []
    for image_id, body, concepts in documents:
        tokens = concepts.split()
        dl = len(body.split()) + len(tokens)
        rows.append((SENTINEL, 0, dl, image_id))
        rows.extend((token, tf, dl, image_id) for token, tf in Counter(tokens).items())
    if not rows:
        return
    ids = term_ids(connection, (row[0] for row in rows))
    added: dict[int, list[int]] = {}
    for token, _, dl, _ in rows:
        count = added.setdefault(ids[token], [0, 0])
        count[0] += 1
        count[1] += dl
    ordered = sorted((ids[token], tf, dl, image_id) for token, tf, dl, image_id in rows)  # the table's order
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        # ~35 rows a document: COPY, not an INSERT a row (a 40k-report fill: 69 -> 42 s)
        with connection.connection.dbapi_connection.cursor() as cursor, cursor.copy(  # type: ignore[union-attr]
                "COPY report_postings (term_id, tf, dl, image_id) FROM STDIN") as copy:
            for row in ordered:
                copy.write_row(row)
    else:
        mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            f"INSERT INTO report_postings (term_id, tf, dl, image_id) VALUES ({mark}, {mark}, {mark}, {mark})", ordered)
    connection.execute(update(ReportTermRow).where(ReportTermRow.id == bindparam("term")).values(
        documents=ReportTermRow.documents + bindparam("n"), tokens=ReportTermRow.tokens + bindparam("length")),
        [{"term": term, "n": n, "length": length} for term, (n, length) in sorted(added.items())])


def backfill_postings(connection: Connection, batch: int = 5000) -> int:
    """Postings for every document that has none (a migrated index, or after `rebuild`), `batch` at a
    time. Returns the documents done."""
    sentinel = connection.scalar(select(ReportTermRow.id).where(ReportTermRow.token == SENTINEL))
    has = select(ReportPostingRow.image_id).where(ReportPostingRow.term_id == sentinel,
                                                  ReportPostingRow.image_id == ReportDocumentRow.image_id)
    done, last = 0, -1
    while True:
        rows = connection.execute(select(ReportDocumentRow.image_id, ReportDocumentRow.body,
                                         ReportDocumentRow.concepts).where(
            ReportDocumentRow.image_id > last, ~has.exists()).order_by(ReportDocumentRow.image_id).limit(batch)).all()
        if not rows:
            return done
        last = rows[-1][0]
        write_postings(connection, [(int(i), str(b), str(c)) for i, b, c in rows])
        done += len(rows)


def postings_problems(connection: Connection) -> list[str]:
    """What is wrong with the postings (that report ranking reads), if anything."""
    found = []
    documents = int(connection.scalar(select(func.count()).select_from(ReportDocumentRow)) or 0)
    sentinel = connection.execute(select(ReportTermRow.id, ReportTermRow.documents).where(
        ReportTermRow.token == SENTINEL)).first()
    posted = 0 if sentinel is None else int(connection.scalar(select(func.count()).where(
        ReportPostingRow.term_id == sentinel[0])) or 0)
    if posted != documents:
        found.append(f"{documents - posted} of {documents} report documents have no postings (verify --repair "
                     "writes them)")
    counted = dict(connection.execute(select(ReportPostingRow.term_id, func.count()).group_by(ReportPostingRow.term_id)
                                      ).all())
    wrong = [token for i, token, n in connection.execute(select(ReportTermRow.id, ReportTermRow.token,
                                                                ReportTermRow.documents)) if counted.get(i, 0) != n]
    if wrong:
        found.append(f"the report terms' counts disagree with their postings for {len(wrong)} terms (verify --repair "
                     "recounts them)")
    return found


def rebuild_postings(connection: Connection) -> None:
    """Every posting written again from the documents, and the counts recounted."""
    connection.execute(delete(ReportPostingRow))
    connection.execute(update(ReportTermRow).values(documents=0, tokens=0))
    backfill_postings(connection)

