"""Report search at scale: N synthetic reports of 60-120 words made from the shipped vocabulary, in
SQLite (FTS5) and PostgreSQL (tsvector + GIN), both written through the store's own schema (migration
0005, its triggers) and ranked by the product's code (plan_report_query, Repository.rank_reports,
fusion.fuse). Prints and writes bench/results/reports_N.json:

- report search p50/p99 (top 10, and the hybrid window of 1,000) per database;
- image-only search p50 in the same run (FAISS IVF-Flat over N vectors of --dim dimensions, nprobe 32,
  top 10) and hybrid = the report window and the image window read as the search API reads them
  (fusion.Windows: at once, the image window on a worker thread, where image windows take over 1 ms),
  then fused, so the two can be compared; and `hybrid_serial_p50_ms`, one after the other;
- the index-time cost of assertion per report: cold (every sentence new to the analyzer) and with its
  sentence cache (reports made of the same sentences, as formulaic reports are).

A report is ~10 sentences drawn from templates (present, negated, uncertain, historical, normal
statements) over the vocabulary's findings and anatomy; each distinct sentence is analysed once by the
real analyzer and a report's document is the concatenation of its sentences' analyses, which is what
the analyzer computes for a report (core/reports/analyzer.py analyses sentence by sentence).

    python -m bench.report_bench --reports 1000000 [--postgres-url URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from sqlalchemy import insert, text

from bench.common import write_result
from bench.pg_server import postgres_server
from core.reports import ReportAnalyzer, report_analyzer
from search_api.services.fusion import Windows, fuse
from search_api.services.query import Fusion
from search_api.services.reports import plan_report_query
from storage.opening import open_index
from storage.reports.postings import write_postings
from storage.sql.models import ImageRow, ReportDocumentRow

PRESENT = ["There is a {size} {side} {finding}.", "{Finding} is seen in the {anatomy}.",
           "IMPRESSION: {size} {finding}.", "Findings are consistent with {finding} of the {anatomy}."]
NEGATED = ["No {finding}.", "There is no evidence of {finding}.", "No {finding} in the {anatomy}.",
           "Negative for {finding}."]
UNCERTAIN = ["Possible {finding} in the {anatomy}.", "{Finding} cannot be excluded.",
             "Findings may represent {finding}."]
HISTORICAL = ["History of {finding}.", "Known {finding} of the {anatomy}, previously treated."]
NORMAL = ["The {anatomy} is unremarkable.", "Heart size is normal.", "Comparison is made with the prior study.",
          "The {anatomy} appears within normal limits.", "Lines and tubes are unchanged in position.",
          "Degenerative changes of the {anatomy}."]
SIZES, SIDES = ["small", "moderate", "large", "trace", "mild"], ["right", "left", "bilateral"]


def sentences(analyzer: ReportAnalyzer, count: int, rng: random.Random) -> list[str]:
    findings = [t.term for t in analyzer.vocabulary.terms.values() if t.kind == "finding"]
    anatomy = [t.term for t in analyzer.vocabulary.terms.values() if t.kind == "anatomy"]
    templates = PRESENT * 3 + NEGATED * 4 + UNCERTAIN + HISTORICAL + NORMAL * 3
    out = set()
    while len(out) < count:
        finding = rng.choice(findings)
        out.add(rng.choice(templates).format(size=rng.choice(SIZES), side=rng.choice(SIDES), finding=finding,
                                             Finding=finding.capitalize(), anatomy=rng.choice(anatomy)))
    return sorted(out)


def report(pool: list[str], rng: random.Random) -> list[int]:
    """A report: the pool indexes of its 9 to 14 sentences."""
    return [rng.randrange(len(pool)) for _ in range(rng.randint(9, 14))]


def assertion_cost(analyzer: ReportAnalyzer, pool: list[str], rng: random.Random, n: int = 300) -> dict[str, float]:
    cold = ReportAnalyzer(analyzer.vocabulary, cache_size=0)  # remembers nothing between reports
    fresh = sentences(analyzer, 12 * n, random.Random(rng.random()))
    texts = [" ".join(fresh[i * 12:(i + 1) * 12]) for i in range(n)]
    started = time.perf_counter()
    for text_ in texts:
        cold.analyze(text_)
    cold_ms = (time.perf_counter() - started) * 1000 / n
    warm = [" ".join(pool[i] for i in report(pool, rng)) for _ in range(n)]
    for text_ in warm:
        analyzer.analyze(text_)  # the pool's sentences now in its cache
    started = time.perf_counter()
    for text_ in warm:
        analyzer.analyze(text_)
    return {"cold_ms_per_report": cold_ms, "cached_ms_per_report": (time.perf_counter() - started) * 1000 / n,
            "words_per_report": float(np.mean([len(t.split()) for t in texts]))}


def fill(url: str | None, folder: Path, analyzer: ReportAnalyzer, pool: list[str], count: int, seed: int) -> float:
    """Write `count` images with report documents; returns the seconds it took."""
    analysed = [analyzer.analyze(sentence) for sentence in pool]
    now = dt.datetime(2026, 1, 1)
    started = time.perf_counter()
    with open_index(folder, create=True, database_url=url, reports=analyzer) as (_, repository):
        rng = random.Random(seed)
        batch = 20_000
        with repository.engine.begin() as connection:
            for start in range(0, count, batch):
                ids = range(start + 1, min(count, start + batch) + 1)
                chosen = [report(pool, rng) for _ in ids]
                connection.execute(insert(ImageRow), [
                    {"id": i, "pixel_sha256": f"{i:064x}", "case_key": f"{i:064x}", "kind": "dicom", "labels": [],
                     "extra": {}, "modality": "CR", "indexed_at": now,
                     "report_text": " ".join(pool[j] for j in c)} for i, c in zip(ids, chosen, strict=True)])
                documents = [(i, " ".join(analysed[j].body for j in c if analysed[j].body),  # type: ignore[union-attr]
                              " ".join(analysed[j].concepts for j in c if analysed[j].concepts))  # type: ignore[union-attr]
                             for i, c in zip(ids, chosen, strict=True)]
                connection.execute(insert(ReportDocumentRow), [
                    {"image_id": i, "body": body, "concepts": concepts, "mentions": [], "has_report": True,
                     "analyzer": analyzer.fingerprint} for i, body, concepts in documents])
                write_postings(connection, documents)  # as Repository.write_documents does
                print(f"  {url or 'sqlite'}: {ids[-1]:,} reports written", flush=True)
        if repository.engine.dialect.name == "postgresql":
            with repository.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE report_documents"))
    return time.perf_counter() - started


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), result


def image_index(count: int, dim: int, seed: int) -> Any:
    import faiss

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, 1024, faiss.METRIC_INNER_PRODUCT)
    chunks = []
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        x = centres[rng.integers(0, 64, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
        faiss.normalize_L2(x)
        chunks.append(x)
    index.train(np.concatenate(chunks)[:60_000])
    for start, chunk in zip(range(0, count, 100_000), chunks, strict=True):
        index.add_with_ids(chunk, np.arange(start + 1, start + 1 + len(chunk), dtype=np.int64))
    index.nprobe = 32
    return index


QUERIES = ["pleural effusion", "no pleural effusion", "pneumothorax", "small right pleural effusion", "cardiomegaly",
           "possible pneumonia", "consolidation", "atelectasis left lower lobe", "fracture", "history of nodule"]


def search_figures(url: str | None, folder: Path, analyzer: ReportAnalyzer, vectors: Any, dim: int,
                   repeat: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((len(QUERIES), dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    out: dict[str, Any] = {"queries": {}}
    with open_index(folder, read_only=True, database_url=url, reports=analyzer) as (_, repository), \
            ThreadPoolExecutor(2) as pool:
        windows = Windows(pool)
        for q, query in enumerate(QUERIES):
            match = plan_report_query(analyzer, query, None).match
            top10 = timed(lambda m=match: repository.rank_reports(m, 10), repeat)
            window = timed(lambda m=match: repository.rank_reports(m, 1000), repeat)
            image = timed(lambda v=queries[q:q + 1]: vectors.search(v, 10), repeat)

            def hybrid(m=match, v=queries[q:q + 1]) -> list:
                reports, images = windows.read(lambda: repository.rank_reports(m, 1000).ids,
                                               lambda: vectors.search(v, 1000)[1][0].tolist())
                return fuse(reports, images, Fusion()).first(10)

            def serial(m=match, v=queries[q:q + 1]) -> list:
                return fuse(repository.rank_reports(m, 1000).ids, vectors.search(v, 1000)[1][0].tolist(),
                            Fusion()).first(10)

            both, one_then_other = timed(hybrid, repeat), timed(serial, repeat)
            assert [f.image_id for f in both[2]] == [f.image_id for f in one_then_other[2]]
            matched = len(repository.report_matches(match))
            ranked_by = repository.rank_reports(match, 10).ranked_by
            out["queries"][query] = {"matches": matched, "ranked_by": ranked_by, "report_p50_ms": top10[0],
                                     "report_window_p50_ms": window[0], "image_p50_ms": image[0],
                                     "hybrid_p50_ms": both[0], "hybrid_serial_p50_ms": one_then_other[0]}
            print(f"  {'postgresql' if url else 'sqlite'} {query!r}: {matched:,} matches ({ranked_by}); report "
                  f"{top10[0]:.1f} ms, window {window[0]:.1f}, image {image[0]:.2f}, hybrid {both[0]:.1f} (serial "
                  f"{one_then_other[0]:.1f})", flush=True)
    rows = out["queries"].values()
    for name in ("report_p50_ms", "report_window_p50_ms", "image_p50_ms", "hybrid_p50_ms", "hybrid_serial_p50_ms"):
        out[name] = float(np.median([r[name] for r in rows]))
    out["hybrid_over_image"] = out["hybrid_p50_ms"] / out["image_p50_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=1_000_000, help="synthetic reports (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=256, help="image vectors' dimension for the image side")
    parser.add_argument("--repeat", type=int, default=15, help="timed repeats of each query")
    parser.add_argument("--postgres-url", help="a PostgreSQL database to fill (default: a throwaway local server "
                        "where PostgreSQL is installed)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    analyzer, rng = report_analyzer(), random.Random(0)
    pool = sentences(analyzer, 4000, rng)
    result: dict[str, Any] = {"reports": args.reports, "dim": args.dim,
                              "assertion": assertion_cost(analyzer, pool, rng)}
    print(f"assertion: {result['assertion']}", flush=True)
    vectors = image_index(args.reports, args.dim, 0)
    with TemporaryDirectory() as tmp:
        if not args.no_sqlite:
            result["sqlite"] = {"write_s": fill(None, Path(tmp) / "sqlite", analyzer, pool, args.reports, 1)}
            result["sqlite"] |= search_figures(None, Path(tmp) / "sqlite", analyzer, vectors, args.dim, args.repeat)
        if not args.no_postgres:
            with postgres_server(args.postgres_url) as url:
                if url is None:
                    print("PostgreSQL is not installed: its figures are skipped")
                else:
                    result["postgresql"] = {"write_s": fill(url, Path(tmp) / "pg", analyzer, pool, args.reports, 1)}
                    result["postgresql"] |= search_figures(url, Path(tmp) / "pg", analyzer, vectors, args.dim,
                                                           args.repeat)
    for name in ("sqlite", "postgresql"):
        if name in result:
            r = result[name]
            print(f"{name} at {args.reports:,}: report p50 {r['report_p50_ms']:.1f} ms (window of 1,000: "
                  f"{r['report_window_p50_ms']:.1f}), image-only {r['image_p50_ms']:.2f} ms, hybrid "
                  f"{r['hybrid_p50_ms']:.1f} ms ({r['hybrid_over_image']:.1f}x image-only); written in "
                  f"{r['write_s']:.0f} s")
    print(f"results: {write_result(f'reports_{args.reports}', result)}")


if __name__ == "__main__":
    main()
