"""`medsearch-index`: index archives, list runs, and make the sample archive / a random test model."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from core.errors import MedsearchError
from core.logs import configure_logging
from core.settings import Settings
from indexer.errors import IndexerError
from indexer.runner import Progress, RunResult
from indexer.scan import Archive
from storage.errors import StorageError

logger = logging.getLogger("indexer")

EXIT_OK, EXIT_NOTHING_INDEXED, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


class TqdmProgress(Progress):
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="file", desc="indexing", dynamic_ncols=True)
        self._failed = -1

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def note(self, **counts: int) -> None:
        if counts.get("failed", 0) != self._failed:
            self._failed = counts.get("failed", 0)
            self._bar.set_postfix(counts, refresh=False)

    def close(self) -> None:
        self._bar.close()


def load_settings(**overrides: Any) -> Settings:
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def settings_error(exc: ValidationError) -> str:
    """One line per bad setting, naming it as an option / environment variable."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"])
        where = f"--{name.replace('_', '-')} / MEDSEARCH_{name.upper()}: " if name else ""
        lines.append(f"{where}{err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def print_summary(result: RunResult, db: Path, max_issues: int = 20) -> None:
    click.echo(
        f"\nrun {result.run_id}: indexed {result.indexed} new images, {result.linked} more sources of images "
        f"already indexed, unchanged {result.unchanged}, skipped {result.skipped}, failed {result.failed}"
        + (f", pruned {result.pruned}" if result.pruned else "")
        + f" in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)"
    )
    stages = ", ".join(f"{name} {secs:.1f} s" for name, secs in sorted(result.stage_seconds.items()))
    if stages:
        click.echo(f"stage times: {stages}")
    shown = [issue for issue in result.issues if issue.kind == "failed"][:max_issues]
    for issue in shown:
        click.echo(f"  failed  {issue.reason}")
    hidden = len(result.issues) - len(shown)
    if hidden > 0:
        click.echo(f"  ... {hidden} more skipped/failed files: medsearch-index runs --db {db} --run {result.run_id}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Index medical image archives for semantic search.

    Every option can also be set in the environment as MEDSEARCH_<NAME> (for example
    MEDSEARCH_MODEL=/models/medsiglip-448) or in a .env file.
    """


@main.command()
@click.argument("archive", required=False)
@click.option("--dicomweb", "dicomweb_url", metavar="URL", help="Index a PACS through its DICOMweb service "
              "(http(s)://HOST:PORT/PATH), instead of ARCHIVE. Same as ARCHIVE dicomweb+URL.")
@click.option("--since", metavar="DATE|last", help="DICOMweb: only studies dated from DATE (YYYYMMDD or "
              "YYYY-MM-DD), or 'last': from the last complete run (less MEDSEARCH_DICOMWEB_LOOKBACK_DAYS, "
              "default 1) - for nightly runs.")
@click.option("--study-date", metavar="RANGE", help="DICOMweb: study date or range: YYYYMMDD, YYYYMMDD-, "
              "-YYYYMMDD, YYYYMMDD-YYYYMMDD (or YYYY-MM-DD..YYYY-MM-DD).")
@click.option("--modality", "modalities", multiple=True, metavar="CODE", help="DICOMweb: studies with this "
              "modality (ModalitiesInStudy); repeat or separate with commas for several.")
@click.option("--qido", "qido", multiple=True, metavar="KEY=VALUE", help="DICOMweb: any other QIDO-RS study "
              "matching key (DICOM keyword or tag), for example StudyDescription=*CHEST*; repeatable.")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder (created if missing). "
              "[env MEDSEARCH_DB_DIR; default ./medsearch-db]")
@click.option("--model", help="Hugging Face hub id or local folder of a SigLIP/CLIP checkpoint. "
              "[default google/medsiglip-448]")
@click.option("--revision", "model_revision", help="Hub revision (branch, tag or commit) of --model.")
@click.option("--batch-size", type=click.IntRange(1, 4096), help="Images per forward pass. [default 16]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Where the model runs. "
              "[default auto: CUDA if present, else CPU]")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest CSV (default: manifest.csv at the archive's root, if present).")
@click.option("--max-image-pixels", type=click.IntRange(1), help="Refuse larger images before decoding.")
@click.option("--window", help="DICOM greyscale window: auto (header, else CT preset by body region, else "
              "percentile), header, percentile, lung, mediastinum, bone, brain, abdomen, or CENTER/WIDTH.")
@click.option("--frames", help="Multi-frame DICOM: middle (default), first, all, or every:N - each selected "
              "frame becomes its own image with its frame number.")
@click.option("--deidentify", is_flag=True, default=None, help="Store keyed pseudonyms instead of patient IDs "
              "and accession numbers (key from MEDSEARCH_DEID_SECRET); names and birth dates are never stored.")
@click.option("--workers", type=click.IntRange(0, 256), help="Decoding worker processes, overlapped with "
              "encoding [default: one per core but one; 0 decodes in the main process].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Model precision [default auto: bf16/fp16 on a GPU, fp32 on a CPU].")
@click.option("--quantize", type=click.Choice(["int8"]), help="Dynamic int8 quantization of the model (CPU).")
@click.option("--prune", is_flag=True, help="Remove entries of files no longer in ARCHIVE.")
@click.option("--new-generation", is_flag=True, help="Build a new index generation in --db (for a new model): "
              "the API keeps serving the current one and switches to the new one when this run completes.")
@click.option("--checkpoint-seconds", type=click.FloatRange(0), help="Save the FAISS index at least this often "
              "[default 30; the database itself is committed after every batch].")
@click.option("--local-files-only", is_flag=True, default=None, help="Never contact the model hub.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run(archive: str | None, dicomweb_url: str | None, since: str | None, study_date: str | None,
        modalities: tuple[str, ...], qido: tuple[str, ...], db_dir: Path | None, model: str | None,
        model_revision: str | None,
        batch_size: int | None, device: str | None, manifest: Path | None, max_image_pixels: int | None,
        window: str | None, frames: str | None, deidentify: bool | None, workers: int | None,
        precision: str | None, quantize: str | None, prune: bool, new_generation: bool,
        checkpoint_seconds: float | None,
        local_files_only: bool | None, progress: bool | None, log_level: str | None) -> None:
    """Index every DICOM, PNG and JPEG image in ARCHIVE (a folder, .zip or .tar[.gz]), or in a PACS
    (ARCHIVE dicomweb+http(s)://HOST:PORT/PATH, or --dicomweb URL).

    DICOM files are recognised by content, with or without the .dcm suffix. A manifest.csv at the
    archive's root gives PNG/JPEG images their patient_id, labels, report and extra columns.
    Files that cannot be indexed are listed with the reason and the run goes on. Rerunning over the
    same archive reads only new or changed files (path, size and time first, then content hash);
    exact duplicates and moved files are recorded as further sources without encoding them again.
    A run killed at any moment can simply be run again: nothing is lost or indexed twice.

    A PACS is read as a DICOMweb client does: studies found with QIDO-RS (narrowed by --since,
    --study-date, --modality, --qido), instances fetched with WADO-RS as stored (no transcoding).
    Instances already indexed are never fetched again, and studies whose instance count has not
    changed are not even listed; a nightly cron job runs --since last. Credentials come from
    MEDSEARCH_DICOMWEB_TOKEN (bearer) or MEDSEARCH_DICOMWEB_USERNAME / _PASSWORD (basic); TLS
    certificates are verified (MEDSEARCH_DICOMWEB_CA_BUNDLE for a hospital CA). Timeouts, lost
    connections and 5xx answers are retried with backoff; what still fails is fetched next run.

    Exit status: 0 when the run completed, 1 when nothing in ARCHIVE could be indexed, 2 when the
    archive, the PACS, the model or the database cannot be used, 130 when interrupted.
    """
    if dicomweb_url is not None:
        if archive is not None:
            raise click.UsageError("give ARCHIVE or --dicomweb URL, not both")
        archive = dicomweb_url if dicomweb_url.lower().startswith("dicomweb+") else "dicomweb+" + dicomweb_url
    if archive is None:
        raise click.UsageError("missing ARCHIVE (a folder, .zip or .tar[.gz]) or --dicomweb URL")
    remote = archive.lower().startswith("dicomweb+")
    if not remote and (since or study_date or modalities or qido):
        raise click.UsageError("--since, --study-date, --modality and --qido select studies in a PACS: "
                               "they need a DICOMweb source (dicomweb+http://... or --dicomweb URL)")
    try:
        settings = load_settings(db_dir=db_dir, model=model, model_revision=model_revision, batch_size=batch_size,
                                 device=device, max_image_pixels=max_image_pixels, window=window, frames=frames,
                                 deidentify=deidentify, workers=workers, precision=precision, quantize=quantize,
                                 checkpoint_seconds=checkpoint_seconds, local_files_only=local_files_only,
                                 log_level=log_level)
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None
    configure_logging(settings.log_level)
    pacs = PacsOptions(since, study_date, modalities, qido) if remote else None
    sys.exit(_run(archive, settings, manifest, progress, prune, new_generation, pacs))


@dataclass(frozen=True)
class PacsOptions:
    since: str | None = None
    study_date: str | None = None
    modalities: tuple[str, ...] = ()
    qido: tuple[str, ...] = ()


def _run(archive_path: str | Path, settings: Settings, manifest: Path | None, progress: bool | None, prune: bool,
         new_generation: bool = False, pacs: PacsOptions | None = None) -> int:
    from core.encoder import HFEncoder, PreprocessorSpec
    from indexer.load import LoadOptions, LoadPool
    from indexer.runner import run_indexing
    from indexer.scan import open_archive
    from storage.store import Store, finish_generation, start_generation

    show_progress = sys.stderr.isatty() if progress is None else progress
    pool = None
    started_on = date.today()
    remote: Any = None
    archive: Archive
    try:
        if pacs is not None:
            from core.dicomweb import DicomWebArchive
            from indexer.pacs import build_query

            query = build_query(pacs.study_date, pacs.modalities, pacs.qido)
            if prune and (not query.complete or pacs.since):
                raise IndexerError("--prune removes what the PACS no longer has, so it needs a listing of every "
                                   "study: run it without --since, --study-date, --modality and --qido")
            archive = remote = DicomWebArchive(str(archive_path), settings.dicomweb_config(), query)
            remote.check()
        else:
            archive = open_archive(archive_path)
        options = LoadOptions(render=settings.render_options(), deid_secret=(
            settings.deid_secret.get_secret_value() if settings.deidentify and settings.deid_secret else None))

        def load_model() -> HFEncoder:
            nonlocal pool
            # decoding workers start first, so that their start-up overlaps the model's loading
            spec = PreprocessorSpec(settings.model, settings.model_revision,
                                    local_files_only=settings.local_files_only)
            pool = LoadPool(settings.worker_count, options, spec) if settings.worker_count else None
            loaded = HFEncoder.load(settings.model, revision=settings.model_revision, device=settings.device,
                                    local_files_only=settings.local_files_only, precision=settings.precision,
                                    quantize=settings.quantize)
            if loaded.fingerprint.random_weights:
                click.echo(f"WARNING: {settings.model} has RANDOM weights (a test model): search results will be "
                           "meaningless.", err=True)
            return loaded

        # a PACS is listed before the model loads: a nightly run with nothing new never loads it
        list_first = remote is not None and not new_generation
        encoder = None if list_first else load_model()
        folder = settings.db_dir
        if new_generation and settings.database_url:
            raise IndexerError("--new-generation keeps each generation's database in its own folder: it needs the "
                               "default SQLite database, not MEDSEARCH_DATABASE_URL")
        if new_generation:
            settings.db_dir.mkdir(parents=True, exist_ok=True)
            folder = start_generation(settings.db_dir)
            click.echo(f"building a new index generation in {folder}", err=True)
        with Store.open(folder, create=True, generation=not new_generation,
                        database_url=settings.database_url) as store:
            from tqdm.contrib.logging import logging_redirect_tqdm

            if remote is not None and pacs is not None:
                from indexer.pacs import apply_since

                click.echo(f"{remote.base_url}: "
                           + apply_since(remote, store.repository, pacs.since, settings.dicomweb_lookback_days),
                           err=True)

            listing = None
            if list_first:
                from indexer.runner import list_archive, record_idle_run

                t0 = time.perf_counter()
                listing = list_archive(archive, store)
                if listing.pending == 0 and not prune:
                    result = record_idle_run(store, archive, listing, time.perf_counter() - t0)
                    click.echo("nothing new on the PACS: the model was not loaded", err=True)
                else:
                    encoder = load_model()
            if encoder is not None:
                with logging_redirect_tqdm():
                    result = run_indexing(
                        archive, store, encoder, batch_size=settings.batch_size,
                        options=options, pool=pool,
                        manifest_bytes=manifest.read_bytes() if manifest else None,
                        progress=TqdmProgress if show_progress else None, workers=settings.worker_count,
                        checkpoint_seconds=settings.checkpoint_seconds, prune=prune, listing=listing,
                    )
            if remote is not None and pacs is not None and not result.interrupted:
                from indexer.pacs import marks_progress, write_mark

                if marks_progress(remote, pacs.study_date):
                    write_mark(store.repository, remote.key, started_on)
            grown = store.maybe_grow_index()
            if grown is not None:
                click.echo(f"index grew to {grown.kind} ({grown.why}): recall@10 {grown.recall_at_10:.3f}")
            total = store.ntotal
    except KeyboardInterrupt:
        click.echo("interrupted: everything written so far is kept; rerun to continue.", err=True)
        return EXIT_INTERRUPTED
    except (MedsearchError, IndexerError, StorageError) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_UNUSABLE
    finally:
        if pool is not None:
            pool.close()
    print_summary(result, settings.db_dir)
    if remote is not None:
        stats = remote.stats
        rate = stats.instances_fetched / result.seconds if result.seconds > 0 else 0.0
        click.echo(f"PACS: {stats.studies} studies matched, {stats.studies_listed} new or changed (listed), "
                   f"{stats.studies_unchanged} unchanged (not listed), {stats.studies_vanished} vanished"
                   + (f", {stats.studies_failed} could not be listed (again next run)" if stats.studies_failed else "")
                   + "; "
                   f"{stats.instances_fetched} instances fetched ({stats.bytes_fetched / 1e6:.1f} MB, "
                   f"{rate:.1f} instances/s), {stats.fetch_failures} to fetch again next run")
        if stats.studies == 0:
            click.echo("the PACS has no study matching the query: nothing to do")
            return EXIT_OK
    if new_generation and not result.interrupted:
        finish_generation(settings.db_dir, folder)
        click.echo(f"generation {folder.relative_to(settings.db_dir)} is now the one in use")
    click.echo(f"index {settings.db_dir}: {total} vectors")
    if result.nothing_indexable:
        click.echo(f"error: nothing in {archive_path} could be indexed", err=True)
        return EXIT_NOTHING_INDEXED
    return EXIT_OK


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--run", "run_id", type=int, help="Show the skipped and failed files of this run.")
def runs(db_dir: Path | None, run_id: int | None) -> None:
    """List indexing runs with their summaries, or one run's skipped and failed files."""
    from storage.store import Store

    settings = load_settings(db_dir=db_dir)
    try:
        store = Store.open(settings.db_dir, database_url=settings.database_url)
    except StorageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)
    with store:
        if run_id is not None:
            for issue in store.repository.run_issues(run_id):
                click.echo(f"{issue.kind:8} {issue.reason}")
            return
        for r in store.repository.list_runs():
            seconds = f"{r.seconds:.1f} s" if r.seconds is not None else "-"
            click.echo(f"{r.id:5} {r.started_at:%Y-%m-%d %H:%M:%S} {r.status:11} indexed {r.indexed:7} "
                       f"skipped {r.skipped:7} failed {r.failed:5} {seconds:>9}  {r.archive}")


def _open_store(db_dir: Path | None) -> Any:
    from storage.store import Store

    settings = load_settings(db_dir=db_dir)
    try:
        return Store.open(settings.db_dir, database_url=settings.database_url)
    except StorageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)


@main.command("build-index")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--index", "kind", type=click.Choice(["auto", "flat", "ivf", "ivfpq", "hnsw"]), default="auto",
              show_default=True, help="auto: exact Flat up to 200k vectors, then IVF-Flat if it fits the memory "
              "budget, else IVF-PQ; HNSW on request.")
@click.option("--memory-budget-gb", type=click.FloatRange(0.001), default=8.0, show_default=True,
              help="Memory the index may use.")
def build_index(db_dir: Path | None, kind: str, memory_budget_gb: float) -> None:
    """(Re)build the FAISS index from the stored embeddings, without re-encoding anything: trains IVF
    indexes, tunes nprobe/efSearch until recall@10 against exact search on held-out queries reaches
    0.95, and prints what it measured. The API picks the new index up without a restart."""
    configure_logging("WARNING")
    with _open_store(db_dir) as store:
        try:
            report = store.build_index(kind, int(memory_budget_gb * 1024**3))
        except StorageError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_UNUSABLE)
    effort = f", search effort {report.search_effort}" if report.search_effort else ""
    click.echo(f"built {report.kind} index ({report.why}): {report.vectors} vectors in {report.seconds:.1f} s, "
               f"~{report.bytes_per_vector:.0f} bytes/vector, recall@10 vs exact {report.recall_at_10:.3f}{effort}")


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--repair", is_flag=True, help="Fix what is found: drop broken rows, rebuild the FAISS index.")
def verify(db_dir: Path | None, repair: bool) -> None:
    """Check that the FAISS index, the image rows, their sources and the stored embeddings agree, id for
    id and vector for vector. Exit status 1 when problems remain."""
    configure_logging("WARNING")
    with _open_store(db_dir) as store:
        problems = store.verify(repair=repair)
        for problem in problems:
            click.echo(f"{'repaired' if repair else 'problem'}: {problem}")
        remaining = store.verify() if repair else problems
        click.echo(f"{store.repository.count_images()} images, {store.repository.count_sources()} sources, "
                   f"{store.ntotal} vectors: {'consistent' if not remaining else 'INCONSISTENT'}")
    sys.exit(1 if remaining else 0)


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--path", "path_prefix", help="Files whose path inside the archive starts with this.")
@click.option("--archive", help="Only in this archive (its path as indexed).")
@click.option("--patient", "patient_id", help="Every image of this patient ID (as stored).")
@click.option("--study", "study_uid", help="Every image of this study instance UID.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def remove(db_dir: Path | None, path_prefix: str | None, archive: str | None, patient_id: str | None,
           study_uid: str | None, yes: bool) -> None:
    """Remove images from the index by path, archive, patient or study. Images found in several files
    stay as long as one of their sources does."""
    if not any((path_prefix, archive, patient_id, study_uid)):
        raise click.UsageError("say what to remove: --path, --archive, --patient or --study")
    configure_logging("WARNING")
    with _open_store(db_dir) as store:
        if archive is not None:
            from core.dicomweb import is_dicomweb, split_location
            from indexer.scan import open_archive

            try:
                archive = split_location(archive)[0] if is_dicomweb(archive) else open_archive(archive).key
            except MedsearchError:  # the archive is gone: remove what was indexed from its path
                archive = str(Path(archive).expanduser().resolve())
        sources = store.repository.select_sources(archive=archive, path_prefix=path_prefix,
                                                  patient_id=patient_id, study_uid=study_uid)
        if not sources:
            click.echo("nothing matches")
            return
        if not yes and not click.confirm(f"remove {len(sources)} sources?", default=False):
            sys.exit(1)
        removed = store.remove_sources(sources)
        click.echo(f"removed {len(sources)} sources and {len(removed)} images; {store.ntotal} vectors remain")


@main.command("eval")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV: 'path' (inside its archive) or 'sop_uid', and 'labels' (separated by ; or |).")
@click.option("--labels-from-metadata", is_flag=True, help="Label each indexed image with its modality and body "
              "region instead (a check that needs no labelling); the CSV is written to the report folder.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML: 'label: prompt' or 'label: [prompts...]' (default: the label itself).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Report folder.")
@click.option("--model", help="Model to encode prompts with [default: the one the index was built with].")
@click.option("--bootstrap", type=click.IntRange(0, 100_000), default=1000, show_default=True,
              help="Bootstrap rounds of the AUC confidence intervals.")
def evaluate_command(db_dir: Path | None, labels_file: Path | None, labels_from_metadata: bool, prompts: Path | None,
                     out: Path, model: str | None, bootstrap: int) -> None:
    """Measure retrieval quality on labelled cases: image->image precision@k, recall@k and mAP (the
    query's own patient left out), text->image recall@k and mAP per label, zero-shot ROC AUC per label
    with a bootstrap 95% interval, and the index in use against exact search. Writes report.json,
    report.md and PNG plots (ROC curves, precision@k, confusion matrix) to --out."""
    from core.encoder import HFEncoder
    from indexer.evaluate import evaluate, format_value, parse_labels, parse_prompts, write_report
    from indexer.evaluate import labels_from_metadata as metadata_labels
    from storage.store import Store

    configure_logging("WARNING")
    if bool(labels_file) == labels_from_metadata:
        raise click.UsageError("give --labels LABELS.csv or --labels-from-metadata")
    settings = load_settings(db_dir=db_dir)
    try:
        store = Store.open(settings.db_dir, read_only=True, database_url=settings.database_url)
    except StorageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)
    with store:
        manifest = store.manifest
        name = model or (manifest.model_name if manifest else settings.model)
        try:
            encoder = HFEncoder.load(name, device=settings.device, local_files_only=settings.local_files_only)
        except MedsearchError as exc:
            click.echo(f"error: the model {name} is not available on this machine, so nothing can be "
                       f"evaluated: {exc}", err=True)
            sys.exit(EXIT_UNUSABLE)
        try:
            if labels_from_metadata:
                text = metadata_labels(store)
                out.mkdir(parents=True, exist_ok=True)
                (out / "labels.csv").write_text(text)
                rows = parse_labels(text.encode(), str(out / "labels.csv"))
            else:
                assert labels_file is not None
                rows = parse_labels(labels_file.read_bytes(), str(labels_file))
            prompt_map = parse_prompts(prompts.read_text(), str(prompts)) if prompts else None
            report = evaluate(store, encoder, rows, prompt_map, bootstrap=bootstrap)
        except IndexerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_UNUSABLE)
    files = write_report(report, out)
    if report["model"]["random_weights"]:
        click.echo("WARNING: the model has RANDOM weights: every figure below is meaningless", err=True)
    i2i = report["image_to_image"]
    click.echo(f"{report['images']} labelled images ({report['unmatched_rows']} rows matched nothing)")
    click.echo(f"image->image: mAP {format_value(i2i['mAP'])}, precision@1/5/10 {format_value(i2i['precision@1'])} / "
               f"{format_value(i2i['precision@5'])} / {format_value(i2i['precision@10'])}")
    click.echo(f"text->image mAP {format_value(report['text_to_image_mAP'])}; zero-shot mean AUC "
               f"{format_value(report['zero_shot_mean_auc'])}")
    for label, row in report["labels"].items():
        click.echo(f"  {label:24} positives {row['positives']:4}  AUC {format_value(row['zero_shot_auc'])}")
    click.echo(f"report: {', '.join(str(f) for f in files)}")


@main.command("sample-archive")
@click.argument("out", type=click.Path(path_type=Path))
def sample_archive(out: Path) -> None:
    """Build the sample archive (real DICOM files from pydicom and pydicom-data, a few PNG/JPEG and a
    manifest.csv) at OUT: a folder, or a .zip / .tar.gz file by its suffix."""
    from indexer.sample import build_sample_archive

    configure_logging("WARNING")
    path, counts = build_sample_archive(out)
    click.echo(f"sample archive {path}: {counts['pydicom']} pydicom files, {counts['pydicom-data']} "
               f"pydicom-data files, {counts['rendered']} PNG/JPEG with manifest.csv")


@main.command("contact-sheet")
@click.argument("archive", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--window", help="As for `run`: auto, header, percentile, a preset name or CENTER/WIDTH.")
@click.option("--frames", help="As for `run`: middle, first, all or every:N.")
@click.option("--limit", type=click.IntRange(1), default=400, show_default=True, help="At most this many tiles.")
def contact_sheet(archive: Path, out: Path, window: str | None, frames: str | None, limit: int) -> None:
    """Render the images of ARCHIVE as the indexer would, tiled with their names and windows into the
    PNG file OUT, for a person to check that nothing is inverted, washed out or black."""
    from indexer.contact_sheet import write_contact_sheet
    from indexer.scan import open_archive

    configure_logging("WARNING")
    try:
        settings = load_settings(window=window, frames=frames)
        result = write_contact_sheet(open_archive(archive), out, settings.render_options(), limit=limit)
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None
    except (IndexerError, MedsearchError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)
    click.echo(f"contact sheet {result.path}: {result.rendered} images, {result.not_rendered} files not rendered")


@main.command("random-model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--shape", type=click.Choice(["tiny", "base", "medsiglip"]), default="tiny", show_default=True,
              help="tiny: 32-d, 32 px, for tests; base: SigLIP-B/16's architecture; medsiglip: MedSigLIP-448's "
              "architecture (878M parameters), for benchmarks.")
def random_model(out: Path, shape: str) -> None:
    """Write a SigLIP with RANDOM weights to OUT, for offline demos and tests only.

    It loads like any checkpoint folder (--model OUT), but its results are meaningless, and
    medsearch says so in every answer built on it.
    """
    from core.random_model import build_random_siglip

    configure_logging("WARNING")
    build_random_siglip(out, shape=shape)  # type: ignore[arg-type]  # click checked the choice
    click.echo(f"random {shape} SigLIP written to {out} (results built on it are meaningless)")


if __name__ == "__main__":  # pragma: no cover
    main()
