"""Build what an indexing run needs from settings, at the entry point: the source, the database folder
(a new generation if asked), the model loader and the engine, put together as an IndexJob."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.imaging.preprocess import is_reduced, rendering_from_version, rendering_of
from core.reports import report_analyzer
from core.settings import Settings
from core.sources import Source, SourceOptions, open_source
from indexer.engines.local_engine import LocalEngine
from indexer.errors import IndexerError
from indexer.pipeline.job import Engine, IndexJob, JobOptions
from indexer.pipeline.load import LoadOptions
from indexer.pipeline.model import ModelSpec, resolve_model
from indexer.pipeline.result import ProgressFactory
from storage.layout import start_generation
from storage.opening import open_index
from storage.records import Manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacsOptions:
    """How to narrow the listing of a PACS (the options of `medsearch-index run` for a DICOMweb source)."""

    since: str | None = None
    study_date: str | None = None
    modalities: tuple[str, ...] = ()
    qido: tuple[str, ...] = ()


def source_options(settings: Settings, pacs: PacsOptions | None = None, prune: bool = False) -> SourceOptions:
    """How sources are opened with these settings (and, for a PACS, the study query of the options)."""
    query = None
    if pacs is not None:
        from indexer.pipeline.pacs import build_query

        query = build_query(pacs.study_date, pacs.modalities, pacs.qido)
        if prune and (not query.complete or pacs.since):
            raise IndexerError("--prune removes what the PACS no longer has, so it needs a listing of every study: "
                               "run it without --since, --study-date, --modality and --qido")
    return SourceOptions(max_member_bytes=settings.max_file_bytes, dicomweb=settings.dicomweb_config(), query=query)


def build_source(location: str, settings: Settings, pacs: PacsOptions | None, prune: bool) -> Source:
    """The folder, zip, tar or PACS at `location`; a source that can check itself (a PACS: one small
    query) does, so that an unreachable server or refused credentials are said before anything else."""
    source = open_source(location, source_options(settings, pacs, prune))
    check = getattr(source, "check", None)
    if callable(check):
        check()
    return source


def choose_model(settings: Settings, manifest: Manifest | None) -> str:
    """--model (or MEDSEARCH_MODEL) when given, else the model the index was built with, else the default."""
    if "model" in settings.model_fields_set or manifest is None:
        return resolve_model(settings.model)
    return manifest.model_name


def make_engine(settings: Settings, load: LoadOptions, model: ModelSpec, folder: Path) -> Engine:
    """The engine the settings ask for; Ray is imported only when it is the one."""
    if settings.engine == "local":
        return LocalEngine(settings.worker_count, load, model.preprocessor())
    from indexer.engines.ray_engine import RayEngine, RayOptions

    return RayEngine(RayOptions(address=settings.ray_address, encoders=settings.ray_encoders,
                                files_per_unit=settings.ray_unit_files, shard_dir=settings.ray_shard_dir,
                                stall_timeout_s=settings.ray_stall_timeout_s, decode_cpus=settings.ray_decode_cpus,
                                encoder_cpus=settings.ray_encoder_cpus), load, folder)


@contextmanager
def build_job(source: Source, settings: Settings, manifest: Path | None, prune: bool, new_generation: bool,
              pacs: PacsOptions | None, progress: ProgressFactory | None = None,
              say: Callable[[str], None] = logger.warning) -> Iterator[IndexJob]:
    """The job over `source` into settings.db_dir (its database open for writing while the job lives).
    `say`: how to tell the person running it what happens (the CLI prints to stderr)."""
    folder, root = settings.db_dir, None
    if new_generation:
        if settings.database_url:
            raise IndexerError("--new-generation keeps each generation's database in its own folder: it needs the "
                               "default SQLite database, not MEDSEARCH_DATABASE_URL")
        settings.db_dir.mkdir(parents=True, exist_ok=True)
        folder, root = start_generation(settings.db_dir), settings.db_dir
        say(f"building a new index generation in {folder}")
    reports = report_analyzer(settings.report_vocabulary, settings.report_context_rules)
    with open_index(folder, create=True, generation=not new_generation, database_url=settings.database_url,
                    reports=reports) as (store, repository):
        recorded = store.manifest
        model = ModelSpec(choose_model(settings, recorded), settings.model_revision, settings.device,
                          settings.precision, settings.quantize, settings.local_files_only,
                          rendering_of(settings.window, reduced=recorded is None or is_reduced(
                              rendering_from_version(recorded.preprocessing_version))), settings.compile_model)
        load = LoadOptions(render=settings.render_options(), reduced=is_reduced(model.rendering),
                           max_file_bytes=settings.max_file_bytes, deid_secret=(
            settings.deid_secret.get_secret_value() if settings.deidentify and settings.deid_secret else None),
            deid_keep_columns=tuple(settings.deid_keep_columns), deid_keep_reports=settings.deid_keep_reports)
        engine = make_engine(settings, load, model, store.folder)
        options = JobOptions(
            batch_size=settings.batch_size, checkpoint_seconds=settings.checkpoint_seconds, prune=prune,
            manifest_bytes=manifest.read_bytes() if manifest else None, load=load,
            since=pacs.since if pacs else None, narrowed=bool(pacs and pacs.study_date),
            lookback_days=settings.dicomweb_lookback_days, generation_root=root,
            force_load=recorded is not None and model.name != recorded.model_name)
        try:
            yield IndexJob(source, store, repository, model, engine, options, progress, say)
        finally:
            engine.close()
