"""One indexing run, as the CLI (or any caller) builds it: `IndexJob(...).run() -> JobResult`.

The job lists the source and compares it with what the database holds *before* the model is loaded,
so a rerun with nothing new (a folder, an archive or a PACS) never loads the model; then it loads the
model through the loader the entry point gave it, runs the stages on the engine, moves the PACS mark,
grows the vector index when its size calls for another kind and, for a new generation, switches the
API to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol

from core.sources import Source
from core.sources.dicomweb import DicomWebArchive, ListingStats
from indexer.pipeline.load import LoadOptions
from indexer.pipeline.model import ModelSpec
from indexer.pipeline.result import ProgressFactory, RunResult
from indexer.pipeline.scan import Listing, list_source
from indexer.pipeline.session import check_not_excluded, record_idle_run
from indexer.pipeline.tuning import text_tuning_queries
from storage.layout import finish_generation
from storage.sql.repository import Repository
from storage.store import Store
from storage.vectors.build import BuildReport

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """Schedules the stages (load, encode, write) of one run over a listing."""

    def recover(self, source: Source, store: Store, repository: Repository, options: JobOptions) -> int:
        """Before the listing: commit what a killed run of this engine left finished (the Ray engine's
        shards), without encoding it again. Returns how many work units it committed."""
        ...

    def prepare(self) -> None:
        """Start what can start before the model is loaded (worker processes, a cluster connection)."""

    def run(self, source: Source, store: Store, repository: Repository, model: ModelSpec, listing: Listing,
            options: JobOptions, progress: ProgressFactory | None) -> RunResult:
        """Load the model where it runs (`model`), read, encode and write what `listing` holds pending."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class JobOptions:
    batch_size: int = 0  # 0: the model's suggestion (HFEncoder.suggest_batch_size)
    checkpoint_seconds: float = 30.0
    prune: bool = False
    manifest_bytes: bytes | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    since: str | None = None  # DICOMweb: a date or "last"
    narrowed: bool = False  # DICOMweb: --study-date, --modality or --qido narrowed the listing
    lookback_days: int = 1
    generation_root: Path | None = None  # a new generation: switch the API to it when the run completes
    force_load: bool = False  # another model than the index's was asked for: load it (and let it be refused)


@dataclass
class JobResult:
    run: RunResult
    vectors: int
    model_loaded: bool
    grown: BuildReport | None = None
    pacs: ListingStats | None = None
    switched_to: Path | None = None
    notes: list[str] = field(default_factory=list)


class IndexJob:
    def __init__(self, source: Source, store: Store, repository: Repository, model: ModelSpec, engine: Engine,
                 options: JobOptions | None = None, progress: ProgressFactory | None = None,
                 say: Callable[[str], None] = logger.warning) -> None:
        self.source = source
        self.store = store
        self.repository = repository
        self.model = model
        self.engine = engine
        self.options = options or JobOptions()
        self.progress = progress
        self.say = say

    def run(self) -> JobResult:
        """Raises the packages' own errors (IndexerError, StorageError, core's MedsearchError) when the
        run cannot start or go on; what was committed before is kept."""
        options, source = self.options, self.source
        started_on = date.today()
        notes: list[str] = []
        check_not_excluded(source, self.repository.exclusion_matcher())
        caught_up = self._catch_up_reports()
        if caught_up:
            notes.append(f"report index: {caught_up} images' report text and descriptions analysed (an index from "
                         "before report search, or a changed vocabulary); nothing encoded")
        resumed = self.engine.recover(source, self.store, self.repository, options)
        if resumed:
            notes.append(f"committed {resumed} work units a killed run had finished (nothing encoded again)")
        remote = source if isinstance(source, DicomWebArchive) else None
        if remote is not None:
            from indexer.pipeline.pacs import apply_since

            notes.append(f"{remote.base_url}: " + apply_since(remote, self.repository, options.since,
                                                              options.lookback_days))
        t0 = time.perf_counter()
        listing = list_source(source, self.repository)
        if listing.pending == 0 and not options.prune and not options.force_load and self.store.manifest is not None:
            notes.append(f"nothing new in {source.key}: the model was not loaded")
            result = record_idle_run(self.repository, source, listing, time.perf_counter() - t0)
            return self._finish(result, remote, started_on, notes, model_loaded=False)
        self.engine.prepare()  # workers start while the model loads
        if self.model.fingerprint().random_weights:
            self.say(f"WARNING: {self.model.name} has RANDOM weights (a test model): search results will be "
                     "meaningless.")
        result = self.engine.run(source, self.store, self.repository, self.model, listing, options, self.progress)
        result.resumed = resumed
        return self._finish(result, remote, started_on, notes, model_loaded=True)

    def _catch_up_reports(self) -> int:
        """Analyse what the report index lacks (written before it existed) or holds from another
        vocabulary, before anything new is written."""
        analyzer = self.repository.reports
        if analyzer is None:
            return 0
        pending, stale = self.repository.reports_pending(), self.repository.reports_stale(analyzer.fingerprint)
        if not pending and not stale:
            return 0
        self.say(f"analysing {pending + stale} images' reports for the report index")
        return self.repository.backfill_reports(stale=bool(stale))

    def _finish(self, result: RunResult, remote: DicomWebArchive | None, started_on: date, notes: list[str],
                model_loaded: bool) -> JobResult:
        if remote is not None and not result.interrupted:
            from indexer.pipeline.pacs import marks_progress, write_mark

            if marks_progress(remote, self.options.narrowed):
                write_mark(self.repository, remote.key, started_on)
        grown = self.store.maybe_grow_index(text_queries=lambda: text_tuning_queries(self.model.load("cpu"))) \
            if model_loaded else None
        switched = None
        root = self.options.generation_root
        if root is not None and not result.interrupted:
            finish_generation(root, self.store.folder)
            switched = self.store.folder
        return JobResult(result, self.store.ntotal, model_loaded, grown, remote.stats if remote else None, switched,
                         notes)
