"""`medsearch-index train-probe` and `medsearch-index probes list|show|remove`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from core.logs import configure_logging
from indexer.cli.common import exit_on_errors, fail, index_encoder, load_settings, open_db
from storage.sql.probes import NAME_PATTERN, Probe


def _name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise click.BadParameter("letters, digits, '.', '_' and '-', at most 128, starting with a letter or digit")
    return value


def _figure(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def describe(probe: Probe) -> list[str]:
    lines = [f"probe {probe.name}: {len(probe.labels)} labels, trained {probe.created_at:%Y-%m-%d %H:%M} UTC on "
             f"{probe.details.get('images')} images of {probe.details.get('patients')} patients"
             f"{' with the zero-shot prompts as prior' if probe.details.get('prior') else ''}",
             f"  model fingerprint {probe.fingerprint_key[:12]}, training set {probe.training_fingerprint[:12]}; "
             f"{probe.metrics.get('validation')}",
             f"  {'label':24} {'pos':>5} {'neg':>5} {'AUC':>6} {'95% CI':>13} {'zero-shot':>9} {'ECE':>6} {'Brier':>6}"]
    for label, m in probe.metrics.get("labels", {}).items():
        ci = m.get("auc_95ci")
        lines.append(f"  {label:24} {m['positives']:5} {m['negatives']:5} {_figure(m['auc']):>6} "
                     f"{(f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else '-'):>13} {_figure(m.get('zero_shot_auc')):>9} "
                     f"{_figure(m['ece']):>6} {_figure(m['brier']):>6}")
    return lines


@click.command("train-probe")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="CSV: 'path' (inside its archive) or 'sop_uid', and 'labels' (separated by ; or |).")
@click.option("--name", required=True, callback=_name, help="The probe's name: /classify?probe=NAME.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML: 'label: prompt' or 'label: [prompts...]': the zero-shot prior (default: the label).")
@click.option("--no-prior", is_flag=True, help="Learn from the labels alone, without the zero-shot prompts.")
@click.option("--model", help="Model to encode the prompts with [default: the one the index was built with].")
@click.option("--replace", is_flag=True, help="Replace a probe of the same name.")
@click.option("--bootstrap", type=click.IntRange(0, 100_000), default=1000, show_default=True,
              help="Bootstrap rounds of the AUC confidence intervals.")
def train_probe(db_dir: Path | None, labels_file: Path, name: str, prompts: Path | None, no_prior: bool,
                model: str | None, replace: bool, bootstrap: int) -> None:
    """Train a probe: one calibrated classifier per label of LABELS.csv on the stored embeddings (nothing
    is re-encoded), cross-validated with folds grouped by patient (never the same patient in training
    and test), with the zero-shot prompts as a prior where labels are few, stored in the index database
    with the model's fingerprint, its training set's fingerprint, the date and its metrics."""
    from indexer.labels import parse_labels, parse_prompts
    from indexer.probes.train import prior_of, train_probe, training_set

    configure_logging("WARNING")
    settings = load_settings(db_dir=db_dir)
    with exit_on_errors():  # a bad file is one line naming it, before the model loads
        rows = parse_labels(labels_file.read_bytes(), str(labels_file))
        prompt_map = parse_prompts(prompts.read_text(), str(prompts)) if prompts else None
    # a probe is one row of SQL: the index is opened read-only, so an indexing run may go on meanwhile
    with open_db(db_dir) as (store, repository), exit_on_errors():
        manifest = store.manifest
        if manifest is None:
            fail("the index is empty: index an archive first")
        encoder = index_encoder(model, manifest, settings)
        data = training_set(store, repository, encoder, rows)
        prior = None if no_prior else prior_of(encoder, data.labels, prompt_map)
        from tqdm import tqdm

        with tqdm(total=len(data.labels), unit="label", desc="training", dynamic_ncols=True) as bar:
            probe = train_probe(data, name, encoder.fingerprint.key, prior, prompt_map, bootstrap,
                                progress=lambda _label: bar.update(1))
        repository.save_probe(probe, replace=replace)
    if encoder.fingerprint.random_weights:
        click.echo("WARNING: the model has RANDOM weights: the prior and every figure below are meaningless", err=True)
    click.echo("\n".join(describe(probe)))
    click.echo(f"stored as probe {name!r}: POST /classify with probe={name}, or filters.probe in a search")


@click.group("probes")
def probes() -> None:
    """The probes stored in an index: list, show, remove."""


@probes.command("list")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
def list_probes(db_dir: Path | None) -> None:
    """One line per probe: name, labels, date, cross-validated mean AUC."""
    with open_db(db_dir) as (store, repository), exit_on_errors():
        found = repository.list_probes()
        key = store.manifest.fingerprint_key if store.manifest else None
    if not found:
        click.echo("no probes (medsearch-index train-probe --help)")
    for probe in found:
        stale = "" if probe.fingerprint_key == key else "  [another model: train again]"
        click.echo(f"{probe.name:24} {probe.created_at:%Y-%m-%d %H:%M}  mean AUC "
                   f"{_figure(probe.metrics.get('mean_auc'))}  labels: {', '.join(probe.labels)}{stale}")


@probes.command("show")
@click.argument("name")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--json", "as_json", is_flag=True, help="Everything but the weights, as JSON.")
def show_probe(name: str, db_dir: Path | None, as_json: bool) -> None:
    """A probe's labels, training set, model and cross-validated metrics per label."""
    with open_db(db_dir) as (_store, repository), exit_on_errors():
        probe = repository.get_probe(name)
    if probe is None:
        fail(f"no probe named {name!r} (medsearch-index probes list)")
    if as_json:
        click.echo(json.dumps({"name": probe.name, "labels": probe.labels, "created_at": probe.created_at.isoformat(),
                               "model_fingerprint": probe.fingerprint_key,
                               "training_fingerprint": probe.training_fingerprint, "metrics": probe.metrics,
                               "details": probe.details}, indent=2))
    else:
        click.echo("\n".join(describe(probe)))


@probes.command("remove")
@click.argument("name")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
def remove_probe(name: str, db_dir: Path | None) -> None:
    """Delete a probe (its searches and classifications then fail with 'unknown probe')."""
    with open_db(db_dir) as (_store, repository), exit_on_errors():
        removed = repository.remove_probe(name)
    if not removed:
        fail(f"no probe named {name!r} (medsearch-index probes list)")
    click.echo(f"removed probe {name!r}")
