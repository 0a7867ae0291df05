"""`medsearch-index` commands around the index: eval, sample-archive, contact-sheet, random-model."""

from __future__ import annotations

from pathlib import Path

import click

from core.logs import configure_logging
from indexer.cli.common import exit_on_errors, index_encoder, load_settings, open_db


@click.command("eval")
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
@click.option("--no-probe", is_flag=True, help="Skip zero-shot against a probe (cross-validated by patient) and "
              "its learning curve.")
@click.option("--compare-window", "compare_window", metavar="WINDOW", help="Also decode the labelled CT images "
              "again with WINDOW (for example ct-channels, MedSigLIP's CT rendering) and with --window, and compare "
              "zero-shot and probe AUC between the two renderings.")
@click.option("--window", help="The single-window rendering --compare-window is compared with [default: auto].")
@click.option("--maps", type=click.IntRange(0, 10_000), default=0, show_default=True, help="Also check the "
              "relevance maps on this many labelled images: deletion and insertion against random masking.")
def evaluate_command(db_dir: Path | None, labels_file: Path | None, labels_from_metadata: bool, prompts: Path | None,
                     out: Path, model: str | None, bootstrap: int, no_probe: bool, compare_window: str | None,
                     window: str | None, maps: int) -> None:
    """Measure retrieval quality on labelled cases: image->image precision@k, recall@k and mAP (the
    query's own patient left out), text->image recall@k and mAP per label, zero-shot ROC AUC per label
    with a bootstrap 95% interval, and the index in use against exact search. Writes report.json,
    report.md and PNG plots (ROC curves, precision@k, confusion matrix) to --out."""
    from indexer.evaluation.evaluate import evaluate
    from indexer.labels import labels_from_metadata as metadata_labels
    from indexer.labels import parse_labels, parse_prompts

    configure_logging("WARNING")
    if bool(labels_file) == labels_from_metadata:
        raise click.UsageError("give --labels LABELS.csv or --labels-from-metadata")
    settings = load_settings(db_dir=db_dir)
    windows = [settings.window if window is None else window, compare_window] if compare_window else None
    if windows:
        load_settings(window=compare_window)  # a usage error names a bad window option
        windows[0] = load_settings(window=windows[0]).window
    with open_db(db_dir) as (store, repository), exit_on_errors():
        encoder = index_encoder(model, store.manifest, settings)
        if labels_from_metadata:
            text = metadata_labels(repository)
            out.mkdir(parents=True, exist_ok=True)
            (out / "labels.csv").write_text(text)
            rows = parse_labels(text.encode(), str(out / "labels.csv"))
        else:
            assert labels_file is not None
            rows = parse_labels(labels_file.read_bytes(), str(labels_file))
        prompt_map = parse_prompts(prompts.read_text(), str(prompts)) if prompts else None
        report = evaluate(store, repository, encoder, rows, prompt_map, bootstrap=bootstrap, probes=not no_probe,
                          windows=windows, render=settings.render_options(), maps=maps)
    from indexer.evaluation.evaluate import format_value, write_report

    files = write_report(report, out)
    if report["model"]["random_weights"]:
        click.echo("WARNING: the model has RANDOM weights: every figure below is meaningless", err=True)
    i2i = report["image_to_image"]
    click.echo(f"{report['images']} labelled images ({report['unmatched_rows']} rows matched nothing)")
    click.echo(f"image->image: mAP {format_value(i2i['mAP'])}, precision@1/5/10 {format_value(i2i['precision@1'])} / "
               f"{format_value(i2i['precision@5'])} / {format_value(i2i['precision@10'])}")
    click.echo(f"text->image mAP {format_value(report['text_to_image_mAP'])}; zero-shot mean AUC "
               f"{format_value(report['zero_shot_mean_auc'])}")
    compared = report.get("probe_vs_zero_shot") or {"labels": {}, "skipped": {}}
    for label, row in report["labels"].items():
        probe = compared["labels"].get(label)
        click.echo(f"  {label:24} positives {row['positives']:4}  zero-shot AUC {format_value(row['zero_shot_auc'])}"
                   + (f"  held-out: zero-shot {format_value(probe['zero_shot_auc'])} vs probe "
                      f"{format_value(probe['probe_auc'])}" if probe else ""))
    found_maps = report.get("relevance_maps")
    if found_maps and "pairs" in found_maps:
        click.echo(f"relevance maps on {found_maps['pairs']} images: deletion {found_maps['deletion']:.4f} vs random "
                   f"{found_maps['random_deletion']:.4f}, insertion {found_maps['insertion']:.4f} vs random "
                   f"{found_maps['random_insertion']:.4f}: " + ("beat random masking" if found_maps["beats_random"]
                                                                 else "do NOT beat random masking"))
    elif found_maps:
        click.echo(f"relevance maps: {found_maps['note']}")
    if compared["skipped"]:
        click.echo(f"  not compared with a probe (fewer than 2 patients with the label, or without it; report.md "
                   f"says which): {', '.join(compared['skipped'])}")
    for name, row in ((report.get("ct_windows") or {}).get("windows") or {}).items():
        click.echo(f"  CT rendered {name:12} zero-shot mean AUC {format_value(row and row['mean_zero_shot_auc'])}, "
                   f"probe {format_value(row and row['mean_probe_auc'])}")
    click.echo(f"report: {', '.join(str(f) for f in files)}")


@click.command("sample-archive")
@click.argument("out", type=click.Path(path_type=Path))
def sample_archive(out: Path) -> None:
    """Build the sample archive (real DICOM files from pydicom and pydicom-data, a few PNG/JPEG and a
    manifest.csv) at OUT: a folder, or a .zip / .tar.gz file by its suffix."""
    from indexer.sample import build_sample_archive

    configure_logging("WARNING")
    path, counts = build_sample_archive(out)
    click.echo(f"sample archive {path}: {counts['pydicom']} pydicom files, {counts['pydicom-data']} "
               f"pydicom-data files, {counts['rendered']} PNG/JPEG with manifest.csv")


@click.command("contact-sheet")
@click.argument("archive", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--window", help="As for `run`: auto, header, percentile, a preset name or CENTER/WIDTH.")
@click.option("--frames", help="As for `run`: middle, first, all or every:N.")
@click.option("--limit", type=click.IntRange(1), default=400, show_default=True, help="At most this many tiles.")
def contact_sheet(archive: Path, out: Path, window: str | None, frames: str | None, limit: int) -> None:
    """Render the images of ARCHIVE as the indexer would, tiled with their names and windows into the
    PNG file OUT, for a person to check that nothing is inverted, washed out or black."""
    from core.sources import SourceOptions, open_source
    from indexer.contact_sheet import write_contact_sheet

    configure_logging("WARNING")
    settings = load_settings(window=window, frames=frames)
    with exit_on_errors():
        result = write_contact_sheet(open_source(archive, SourceOptions(max_member_bytes=settings.max_file_bytes)), out,
                                     settings.render_options(), limit=limit)
    click.echo(f"contact sheet {result.path}: {result.rendered} images, {result.not_rendered} files not rendered")


@click.command("random-model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--shape", type=click.Choice(["tiny", "base", "medsiglip", "medsiglip-grid", "wide"]), default="tiny",
              show_default=True, help="tiny: 32-d, 32 px, for tests; base: SigLIP-B/16's architecture; medsiglip: "
              "MedSigLIP-448's architecture (878M parameters), for benchmarks; medsiglip-grid: MedSigLIP's 448-px, "
              "32 x 32-patch input at a tiny width (relevance-map tests); wide: 256-d, 32 px (the scale bench).")
def random_model(out: Path, shape: str) -> None:
    """Write a SigLIP with RANDOM weights to OUT, for offline demos and tests only.

    It loads like any checkpoint folder (--model OUT), but its results are meaningless, and
    medsearch says so in every answer built on it.
    """
    from core.model.random_model import build_random_siglip

    configure_logging("WARNING")
    build_random_siglip(out, shape=shape)  # type: ignore[arg-type]  # click checked the choice
    click.echo(f"random {shape} SigLIP written to {out} (results built on it are meaningless)")
