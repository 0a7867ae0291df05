"""`medsearch-index`: index archives, list runs, check, rebuild and remove. The command only parses
options, builds the objects (source, store, repository, model loader, engine), runs the job, prints
and maps errors to exit codes (indexer/cli/common.py); the work is in indexer/pipeline/job.py and the stages."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from core.logs import configure_logging
from core.memory import return_large_buffers
from core.settings import Settings
from indexer.build import PacsOptions
from indexer.cli.common import (
    EXIT_NOTHING_INDEXED,
    EXIT_OK,
    TqdmProgress,
    describe_tuning,
    exit_on_errors,
    fail,
    index_encoder,
    load_settings,
    open_db,
)
from indexer.cli.probes import probes, train_probe
from indexer.cli.remove import exclusions, remove
from indexer.cli.tools import contact_sheet, evaluate_command, random_model, sample_archive
from indexer.pipeline.job import JobResult
from storage.layout import writer_active
from storage.vectors.plan import KINDS, plan_index

logger = logging.getLogger("indexer")


def print_summary(job: JobResult, db: Path, max_issues: int = 20) -> None:
    result = job.run
    for note in job.notes:
        click.echo(note, err=True)
    click.echo(
        f"\nrun {result.run_id}: indexed {result.indexed} new images ({result.encoded} encoded), {result.linked} "
        "more sources of images "
        f"already indexed, unchanged {result.unchanged}, skipped {result.skipped}, failed {result.failed}"
        + (f", pruned {result.pruned}" if result.pruned else "")
        + f" in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)")
    stages = ", ".join(f"{name} {secs:.1f} s" for name, secs in sorted(result.stage_seconds.items()))
    if stages:
        click.echo(f"stage times: {stages}")
    shown = [issue for issue in result.issues if issue.kind == "failed"][:max_issues]
    for issue in shown:
        click.echo(f"  failed  {issue.reason}")
    hidden = len(result.issues) - len(shown)
    if hidden > 0:
        click.echo(f"  ... {hidden} more skipped/failed files: medsearch-index runs --db {db} --run {result.run_id}")
    if job.pacs is not None:
        stats = job.pacs
        rate = stats.instances_fetched / result.seconds if result.seconds > 0 else 0.0
        click.echo(f"PACS: {stats.studies} studies matched, {stats.studies_listed} new or changed (listed), "
                   f"{stats.studies_unchanged} unchanged (not listed), {stats.studies_vanished} vanished"
                   + (f", {stats.studies_failed} could not be listed (again next run)" if stats.studies_failed else "")
                   + f"; {stats.instances_fetched} instances fetched ({stats.bytes_fetched / 1e6:.1f} MB, "
                   f"{rate:.1f} instances/s), {stats.fetch_failures} to fetch again next run")
    if job.grown is not None:
        click.echo(f"index grew to {job.grown.kind} ({job.grown.why})")
        for line in describe_tuning(job.grown):
            click.echo(f"  {line}")
    if job.switched_to is not None:
        click.echo(f"generation {job.switched_to.relative_to(db)} is now the one in use")
    click.echo(f"index {db}: {job.vectors} vectors")


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
@click.option("--model", help="Hugging Face hub id or local folder of a SigLIP/CLIP checkpoint. [default: the model "
              "the index was built with; for a new index google/medsiglip-448]")
@click.option("--revision", "model_revision", help="Hub revision (branch, tag or commit) of --model.")
@click.option("--batch-size", type=click.IntRange(0, 4096), help="Images per forward pass. [default 0: auto, from "
              "the free memory on a GPU (up to 512), 16 on a CPU]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Where the model runs. "
              "[default auto: CUDA if present, else CPU]")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest CSV (default: manifest.csv at the archive's root, if present).")
@click.option("--max-image-pixels", type=click.IntRange(1), help="Refuse larger images before decoding.")
@click.option("--window", help="DICOM greyscale window: auto (header, else CT preset by body region, else "
              "percentile), header, percentile, lung, mediastinum, bone, brain, abdomen, CENTER/WIDTH, or "
              "ct-channels (CT as MedSigLIP was trained: three windows in the colour channels; part of the "
              "model fingerprint, so it needs its own index or --new-generation).")
@click.option("--frames", help="Multi-frame DICOM: middle (default), first, all, or every:N - each selected "
              "frame becomes its own image with its frame number.")
@click.option("--deidentify", is_flag=True, default=None, help="Store keyed pseudonyms instead of patient IDs "
              "and accession numbers (key from MEDSEARCH_DEID_SECRET); names and birth dates are never stored, "
              "nor manifest columns beyond the known fields (unless MEDSEARCH_DEID_KEEP_COLUMNS lists them) or "
              "report text (unless MEDSEARCH_DEID_KEEP_REPORTS=true).")
@click.option("--workers", type=click.IntRange(0, 256), help="Decoding worker processes, overlapped with "
              "encoding [default: one per core but one; 0 decodes in the main process].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Model precision [default auto: bf16/fp16 on a GPU, fp32 on a CPU].")
@click.option("--quantize", type=click.Choice(["int8"]), help="Dynamic int8 quantization of the model (CPU).")
@click.option("--compile", "compile_model", is_flag=True, default=None, help="torch.compile the image tower: faster "
              "long runs on a GPU; the first batch waits for the compilation (a minute or more).")
@click.option("--prune", is_flag=True, help="Remove entries of files no longer in ARCHIVE.")
@click.option("--new-generation", is_flag=True, help="Build a new index generation in --db (for a new model): "
              "the API keeps serving the current one and switches to the new one when this run completes.")
@click.option("--engine", type=click.Choice(["local", "ray"]), help="Where the run runs: local (worker processes "
              "of this machine) or ray (a Ray cluster: pip install -e '.[ray]'). [default local]")
@click.option("--ray-address", metavar="HOST:PORT", help="Ray: the running cluster's head; without it a local cluster "
              "is started on loopback for the run.")
@click.option("--ray-encoders", type=click.IntRange(1, 4096), help="Ray: encoding actors, one model load each "
              "[default: one per GPU, else 1].")
@click.option("--ray-unit-files", type=click.IntRange(1, 100_000), help="Ray: files per work unit [default 32].")
@click.option("--ray-shard-dir", type=click.Path(file_okay=False, path_type=Path), help="Ray: where finished units "
              "are written before they are committed [default DB/shards; on several nodes, a shared folder].")
@click.option("--ray-stall-timeout", "ray_stall_timeout_s", type=click.FloatRange(1), help="Ray: stop with an error "
              "after this many seconds without progress [default 600].")
@click.option("--checkpoint-seconds", type=click.FloatRange(0), help="Save the FAISS index at least this often "
              "[default 30; the database itself is committed after every batch].")
@click.option("--local-files-only", is_flag=True, default=None, help="Never contact the model hub.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run(archive: str | None, dicomweb_url: str | None, since: str | None, study_date: str | None,
        modalities: tuple[str, ...], qido: tuple[str, ...], db_dir: Path | None, manifest: Path | None,
        progress: bool | None, prune: bool, new_generation: bool, **options: object) -> None:
    """Index every DICOM, PNG and JPEG image in ARCHIVE (a folder, .zip or .tar[.gz]), or in a PACS
    (ARCHIVE dicomweb+http(s)://HOST:PORT/PATH, or --dicomweb URL).

    DICOM files are recognised by content, with or without the .dcm suffix. A manifest.csv at the
    archive's root gives PNG/JPEG images their patient_id, labels, report and extra columns.
    Files that cannot be indexed are listed with the reason and the run goes on. Rerunning over the
    same archive reads only new or changed files (path, size and time first, then content hash);
    a rerun with nothing new does not even load the model. Exact duplicates and moved files are
    recorded as further sources without encoding them again; the same pixels under another patient
    or study become a result of their own. A run killed at any moment can simply be run again:
    nothing is lost or indexed twice.

    A PACS is read as a DICOMweb client does: studies found with QIDO-RS (narrowed by --since,
    --study-date, --modality, --qido), instances fetched with WADO-RS as stored (no transcoding).
    Instances already indexed are never fetched again, and studies whose instance count has not
    changed are not even listed; a nightly cron job runs --since last. Credentials come from
    MEDSEARCH_DICOMWEB_TOKEN (bearer) or MEDSEARCH_DICOMWEB_USERNAME / _PASSWORD (basic); TLS
    certificates are verified (MEDSEARCH_DICOMWEB_CA_BUNDLE for a hospital CA). Timeouts, lost
    connections and 5xx answers are retried with backoff; what still fails is fetched next run.

    Exit status: 0 when the run completed, 1 when nothing in ARCHIVE could be indexed, 2 when the
    archive, the PACS, the model or the database cannot be used (a full disk included), 130 when
    interrupted.
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
    settings = load_settings(db_dir=db_dir, **options)
    configure_logging(settings.log_level)
    return_large_buffers()
    pacs = PacsOptions(since, study_date, modalities, qido) if remote else None
    with exit_on_errors():
        code = _run(archive, settings, manifest, progress, prune, new_generation, pacs)
    sys.exit(code)


def _run(location: str, settings: Settings, manifest: Path | None, progress: bool | None, prune: bool,
         new_generation: bool, pacs: PacsOptions | None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from indexer.build import build_job, build_source

    source = build_source(location, settings, pacs, prune)
    show = sys.stderr.isatty() if progress is None else progress
    with build_job(source, settings, manifest, prune, new_generation, pacs, progress=TqdmProgress if show else None,
                   say=lambda message: click.echo(message, err=True)) as job, logging_redirect_tqdm():
        result = job.run()
    print_summary(result, settings.db_dir)
    if result.run.nothing_indexable and result.model_loaded:
        click.echo(f"error: nothing in {location} could be indexed", err=True)
        return EXIT_NOTHING_INDEXED
    return EXIT_OK


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--run", "run_id", type=int, help="Show the skipped and failed files of this run.")
def runs(db_dir: Path | None, run_id: int | None) -> None:
    """List indexing runs with their counts (a killed run shows what it committed), or one run's
    skipped and failed files. Reads only: never writes to the database folder."""
    with open_db(db_dir) as (store, repository), exit_on_errors():
        if run_id is not None:
            if repository.get_run(run_id) is None:
                known = repository.list_runs()
                fail(f"no run {run_id} in this index" + (f" (runs {known[0].id} to {known[-1].id}: "
                                                         "`medsearch-index runs` lists them)" if known else ""))
            for issue in repository.run_issues(run_id):
                click.echo(f"{issue.kind:8} {issue.reason}")
            return
        writing = writer_active(store.folder)
        for r in repository.list_runs():
            seconds = f"{r.seconds:.1f} s" if r.seconds is not None else "-"
            status = "stopped" if r.status == "running" and not writing else r.status  # killed, or a full disk
            click.echo(f"{r.id:5} {r.started_at:%Y-%m-%d %H:%M:%S} {status:11} indexed {r.indexed:7} "
                       f"unchanged {r.unchanged:7} skipped {r.skipped:6} failed {r.failed:5} {seconds:>9}  {r.archive}")


@main.command("build-index")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--index", "kind", type=click.Choice(["auto", *KINDS]), default="auto",
              show_default=True, help="auto: exact Flat up to 200k vectors, then IVF-Flat if it fits the memory "
              "budget, else IVF-SQ8 (a byte a dimension) if it fits, else IVF-RaBitQ (1 bit a dimension, ~190 "
              "bytes a vector); both re-ranked from the stored vectors; "
              "IVF-PQ and HNSW on request.")
@click.option("--memory-budget-gb", type=click.FloatRange(0.001), default=8.0, show_default=True,
              help="Memory the index may use.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: an IVF index trained on a sample, filled in shards on a Ray cluster (by id range) and "
              "merged on disk, for indexes larger than one process's memory.")
@click.option("--ray-address", metavar="HOST:PORT", help="Ray: the cluster's head [default: a local cluster].")
@click.option("--ray-parts", type=click.IntRange(1, 100_000), help="Ray: shards [default: the cluster's CPUs].")
@click.option("--text-queries/--no-text-queries", default=True, show_default=True,
              help="Tune a separate effort for text queries: loads the index's model to encode 400 radiology "
              "query phrases (core/reports/query_phrases.json). Without: text queries use the image effort.")
def build_index(db_dir: Path | None, kind: str, memory_budget_gb: float, engine: str, ray_address: str | None,
                ray_parts: int | None, text_queries: bool) -> None:
    """(Re)build the FAISS index from the stored embeddings, without re-encoding anything: trains IVF
    indexes, tunes nprobe/efSearch (and a compressed index's re-ranked candidates) separately for image
    queries (stored vectors it was not trained on) and text queries (radiology phrases encoded by the
    index's model), each the cheapest whose recall@10 against exact search reaches 0.95 on half its
    queries with confidence (the lower end of its 95% interval), and prints the recall each reaches on
    the other half. The API picks the new index up
    without a restart."""
    configure_logging("WARNING")
    budget = int(memory_budget_gb * 1024**3)
    with open_db(db_dir, read_only=False) as (store, repository), exit_on_errors():
        texts = None
        if text_queries and store.manifest is not None and plan_index(
                store.ntotal, store.manifest.dim, kind, budget).kind != "flat":  # an exact index tunes nothing
            from indexer.pipeline.tuning import text_tuning_queries

            texts = text_tuning_queries(index_encoder(None, store.manifest, load_settings(db_dir=db_dir)))
        if engine == "ray":
            from indexer.engines.ray_build import build_on_ray
            from indexer.engines.ray_engine import RayEngine, RayOptions
            from indexer.pipeline.load import LoadOptions

            ray = RayEngine(RayOptions(address=ray_address), LoadOptions(), store.folder)
            try:
                report = build_on_ray(store, repository, ray, kind, budget, ray_parts, texts)
            finally:
                ray.close()
        else:
            report = store.build_index(kind, budget, text_queries=texts)
    click.echo(f"built {report.kind} index ({report.why}): {report.vectors} vectors in {report.seconds:.1f} s, "
               f"~{report.bytes_per_vector:.0f} bytes/vector")
    for line in describe_tuning(report):
        click.echo(f"  {line}")


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--repair", is_flag=True, help="Fix what is found: drop broken rows, rebuild the FAISS index.")
def verify(db_dir: Path | None, repair: bool) -> None:
    """Check that the FAISS index, the image rows, their sources and the stored embeddings agree, id for
    id and vector for vector. Exit status 1 when problems remain. Without --repair it never writes."""
    configure_logging("WARNING")
    with open_db(db_dir, read_only=not repair, reports=True) as (store, repository), exit_on_errors():
        problems = store.verify(repair=repair)
        for problem in problems:
            click.echo(f"{'repaired' if repair else 'problem'}: {problem}")
        remaining = store.verify() if repair else problems
        click.echo(f"{repository.count_images()} images, {repository.count_sources()} sources, "
                   f"{store.ntotal} vectors: {'consistent' if not remaining else 'INCONSISTENT'}")
    sys.exit(1 if remaining else 0)


for command in (remove, exclusions, evaluate_command, train_probe, probes, sample_archive, contact_sheet, random_model):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
