"""The local engine: decoding in worker processes of this machine, encoding and writing in this process
(indexer/engines/runner.py is its loop)."""

from __future__ import annotations

from core.model.encoder import PreprocessorSpec
from core.sources import Source
from indexer.engines.runner import run_indexing
from indexer.pipeline.job import JobOptions
from indexer.pipeline.load import LoadOptions, LoadPool
from indexer.pipeline.model import ModelSpec
from indexer.pipeline.result import ProgressFactory, RunResult
from indexer.pipeline.scan import Listing
from storage.sql.repository import Repository
from storage.store import Store


class LocalEngine:
    def __init__(self, workers: int, load: LoadOptions, spec: PreprocessorSpec) -> None:
        self.workers = workers
        self._load = load
        self._spec = spec
        self._pool: LoadPool | None = None

    def recover(self, source: Source, store: Store, repository: Repository, options: JobOptions) -> int:
        return 0  # every batch commits in one transaction: nothing finished is left uncommitted

    def prepare(self) -> None:
        if self.workers and self._pool is None:
            self._pool = LoadPool(self.workers, self._load, self._spec)

    def run(self, source: Source, store: Store, repository: Repository, model: ModelSpec, listing: Listing,
            options: JobOptions, progress: ProgressFactory | None) -> RunResult:
        encoder = model.load()
        batch_size = options.batch_size or encoder.suggest_batch_size()
        return run_indexing(source, store, repository, encoder, batch_size=batch_size, options=options.load,
                            manifest_bytes=options.manifest_bytes, progress=progress,
                            checkpoint_seconds=options.checkpoint_seconds, workers=self.workers, prune=options.prune,
                            pool=self._pool, listing=listing)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
