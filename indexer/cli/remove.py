"""`medsearch-index remove` and `medsearch-index exclusions`: take a patient, study, files or an archive
out of the index, in every generation of the folder, leaving no trace, and keep them out."""

from __future__ import annotations

from pathlib import Path

import click

from core.deid import pseudonym
from core.errors import MedsearchError
from core.logs import configure_logging
from core.settings import Settings
from core.sources import open_source
from core.sources.dicomweb_locations import is_dicomweb, split_location
from indexer.cli.common import exit_on_errors, load_settings, open_db
from storage.layout import GENERATIONS
from storage.opening import DATABASE_NAME, open_index
from storage.records import RemovalPreview, Selection

SHOWN = 20


def generation_folders(settings: Settings) -> list[Path]:
    """Every generation of the database folder: a removal must reach old generations too."""
    root = settings.db_dir
    if settings.database_url:
        return [root]
    found = [root] if (root / DATABASE_NAME).exists() else []
    numbered = sorted((p for p in (root / GENERATIONS).glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    return found + [p for p in numbered if (p / DATABASE_NAME).exists()]


def archive_key(archive: str) -> str:
    if is_dicomweb(archive):
        return split_location(archive)[0]
    try:
        return open_source(archive).key
    except MedsearchError:  # the archive is gone: remove what was indexed from its path
        return str(Path(archive).expanduser().resolve())


def describe(preview: RemovalPreview) -> list[str]:
    lines = [f"{preview.sources} sources, {preview.images} images, {preview.issues} skipped/failed file records"]
    for label, counts in (("patient", preview.by_patient), ("study", preview.by_study)):
        items = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        lines += [f"  {label} {name}: {count} images" for name, count in items[:SHOWN]]
        if len(items) > SHOWN:
            lines.append(f"  ... and {len(items) - SHOWN} more {label}s")
    return lines


@click.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--path", "path_prefix", help="Files whose path inside the archive starts with this.")
@click.option("--archive", help="Only in this archive (its path or DICOMweb location as indexed).")
@click.option("--patient", "patient_id", help="Every image of this patient ID (as stored; in a de-identified index "
              "the real ID works too when MEDSEARCH_DEID_SECRET is set).")
@click.option("--study", "study_uid", help="Every image of this Study Instance UID.")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed, per patient and study.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--note", help="Why, kept with the exclusion (a request number, say; no identifiers).")
def remove(db_dir: Path | None, path_prefix: str | None, archive: str | None, patient_id: str | None,
           study_uid: str | None, dry_run: bool, yes: bool, note: str | None) -> None:
    """Remove images by path, archive, patient or study from every generation of the index: their rows,
    vectors and file records go, and nothing of them stays in the database files. Images found in
    several files of the same patient and study stay as long as one of their files is not removed.

    The removal sticks: later runs over the same archive skip the removed patient, study, files or
    archive (`medsearch-index exclusions` lists the exclusions; `--lift ID` undoes one). It shows
    what it will remove, per patient and study, and asks before doing it."""
    if not any((path_prefix, archive, patient_id, study_uid)):
        raise click.UsageError("say what to remove: --path, --archive, --patient or --study")
    configure_logging("WARNING")
    settings = load_settings(db_dir=db_dir)
    with exit_on_errors():
        key = archive_key(archive) if archive is not None else None
        selection = Selection(archive=key, path_prefix=path_prefix, patient_id=patient_id, study_uid=study_uid)
        folders = generation_folders(settings)
        previews = []
        for folder in folders:
            with open_index(folder, generation=False, read_only=True, database_url=settings.database_url) as (_, repo):
                preview = repo.preview_removal(selection)
                if preview.sources == 0 and patient_id and settings.deid_secret:  # a de-identified index
                    secret = settings.deid_secret.get_secret_value()
                    alias = Selection(key, path_prefix, pseudonym(patient_id, secret, "patient"), study_uid)
                    if repo.preview_removal(alias).sources:
                        selection, preview = alias, repo.preview_removal(alias)
                previews.append((folder, preview))
        if not any(preview.sources for _, preview in previews):
            click.echo("nothing matches")
            return
        for folder, preview in previews:
            if preview.sources:
                verb = "would remove" if dry_run else "will remove"
                click.echo(f"{verb} from {folder}: " + "\n".join(describe(preview)))
        if dry_run:
            return
        if not yes and not click.confirm("remove these, and keep them out of later runs?", default=False):
            raise SystemExit(1)
        for folder, preview in previews:
            if not preview.sources:
                continue
            with open_index(folder, generation=False, database_url=settings.database_url) as (store, repository):
                done = store.remove(selection, note)
                if key is not None and selection == Selection(archive=key) and is_dicomweb(key):
                    from indexer.pipeline.pacs import forget_mark

                    forget_mark(repository, key)
                click.echo(f"removed {done.sources} sources and {done.images} images from {folder}; "
                           f"{store.ntotal} vectors remain")
        click.echo("later runs will not index them again (medsearch-index exclusions lists the exclusions)")


@click.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--lift", "lift", type=int, metavar="ID", help="Undo exclusion ID: later runs index its files again.")
def exclusions(db_dir: Path | None, lift: int | None) -> None:
    """List the removals that later runs respect (kind, when, how much was removed, the note), or lift
    one. The list keeps a keyed hash of each removed identifier, never the identifier itself."""
    with open_db(db_dir, read_only=lift is None) as (_, repository), exit_on_errors():
        if lift is not None:
            if not repository.lift_exclusion(lift):
                raise click.ClickException(f"no exclusion {lift} (`medsearch-index exclusions` lists them)")
            click.echo(f"exclusion {lift} lifted: the next run indexes its files again")
            return
        found = repository.exclusions()
        if not found:
            click.echo("no exclusions")
        for e in found:
            click.echo(f"{e.id:4} {e.kind:8} {e.created_at:%Y-%m-%d %H:%M}  removed {e.images:6} images "
                       f"{e.sources:6} sources  hash {e.digest[:12]}  {e.note or ''}".rstrip())
