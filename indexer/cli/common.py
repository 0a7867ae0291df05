"""What every `medsearch-index` command shares: settings from options, the progress bar, opening the
database folder, and the one place where errors become a line on stderr and an exit status."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import ValidationError

from core.errors import MedsearchError
from core.reports import report_analyzer
from core.settings import Settings
from indexer.engines.runner import Progress
from indexer.errors import IndexerError
from storage.errors import DiskFullError, StorageError
from storage.opening import OpenIndex, open_index
from storage.records import Manifest
from storage.vectors.build import BuildReport

if TYPE_CHECKING:
    from core.model.encoder import HFEncoder

EXIT_OK, EXIT_NOTHING_INDEXED, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
# every error root of ours: the CLI's only job with them is to say them in one line
ERROR_ROOTS: tuple[type[Exception], ...] = (MedsearchError, IndexerError, StorageError)


def fail(message: str, code: int = EXIT_UNUSABLE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextmanager
def exit_on_errors() -> Iterator[None]:
    """Each package's error root becomes one line and exit status 2 (a full disk says so: everything
    committed before is kept); Ctrl-C becomes 130."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("interrupted: everything written so far is kept; rerun to continue.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except DiskFullError as exc:
        fail(f"{exc} (everything committed before is kept)")
    except ERROR_ROOTS as exc:
        fail(str(exc))


def settings_error(exc: ValidationError) -> str:
    """One line per bad setting, naming it as an option / environment variable."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"])
        where = f"--{name.replace('_', '-')} / MEDSEARCH_{name.upper()}: " if name else ""
        lines.append(f"{where}{err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and the options given (None: not given); a bad value is a usage error."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None


def open_db(db_dir: Path | None, *, read_only: bool = True, reports: bool = False) -> OpenIndex:
    """The database folder of --db (or MEDSEARCH_DB_DIR); read-only commands never write to it. `reports`:
    with the report analyzer (seconds to build), for commands that write or check the report index."""
    settings = load_settings(db_dir=db_dir)
    with exit_on_errors():
        analyzer = report_analyzer(settings.report_vocabulary, settings.report_context_rules) if reports else None
        return open_index(settings.db_dir, database_url=settings.database_url, read_only=read_only, reports=analyzer)


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


def index_encoder(model: str | None, manifest: Manifest | None, settings: Settings) -> HFEncoder:
    """The model an index was built with (or --model), rendering as the index did; exits when absent."""
    from core.imaging.preprocess import rendering_from_version
    from core.model.encoder import HFEncoder

    name = model or (manifest.model_name if manifest else settings.model)
    try:
        return HFEncoder.load(name, device=settings.device, local_files_only=settings.local_files_only,
                              rendering=rendering_from_version(manifest.preprocessing_version) if manifest else "")
    except MedsearchError as exc:
        fail(f"the model {name} is not available on this machine: {exc}")


def describe_tuning(report: BuildReport) -> list[str]:
    """One line per query kind: the held-out recall@10 against exact search and the effort chosen."""
    if report.kind == "flat":
        return ["exact search: recall@10 1.000 for every query"]

    def effort(probes: int | None, rerank: int) -> str:
        name = "efSearch" if report.kind == "hnsw" else "nprobe"
        return f"{name} {probes}" + (f", {rerank} candidates re-ranked exactly" if rerank else "")

    lines = [f"image queries: held-out recall@10 vs exact {report.recall_at_10:.3f} (95% CI {report.recall_95ci[0]:.3f}"
             f"-{report.recall_95ci[1]:.3f}) at {effort(report.search_effort, report.rerank)}"]
    if report.text_recall_at_10 is None:
        lines.append("text queries: not tuned (--no-text-queries): they search at the image effort")
    else:
        lines.append(f"text queries: held-out recall@10 vs exact {report.text_recall_at_10:.3f} (95% CI "
                     f"{report.text_recall_95ci[0]:.3f}-{report.text_recall_95ci[1]:.3f}) at "
                     f"{effort(report.text_search_effort, report.text_rerank)}")
    return lines
