"""`medsearch-api`: serve the search API over an index built by medsearch-index."""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from core.errors import MedsearchError
from core.logs import configure_logging
from core.memory import return_large_buffers
from core.settings import Settings
from search_api.cli_search import search
from storage.errors import StorageError

logger = logging.getLogger("search_api")


@contextmanager
def exit_on_errors() -> Iterator[None]:
    """The one place where error roots become a line on stderr and exit status 2 (a full disk says so)."""
    try:
        yield
    except (StorageError, MedsearchError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def load_settings(**options: Any) -> Settings:
    try:
        return Settings(**{key: value for key, value in options.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise click.UsageError(problems) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Serve semantic search over a medsearch index.

    Every option can also be set in the environment as MEDSEARCH_<NAME> or in a .env file.
    """


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder written by "
              "medsearch-index. [env MEDSEARCH_DB_DIR; default ./medsearch-db]")
@click.option("--host", help="Address to bind. [default 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Port. [default 8000]")
@click.option("--model", help="Model to encode queries with. [default: the one the index was built with]")
@click.option("--revision", "model_revision", help="Hub revision of --model.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[default auto]")
@click.option("--local-files-only", is_flag=True, default=None, help="Never contact the model hub.")
@click.option("--open", "open_mode", is_flag=True, help="No authentication, every caller a clinician: only on a "
              "loopback address, for demos.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(open_mode: bool, **options: Any) -> None:
    """Load the model and the index once, then answer HTTP requests.

    Callers need an API key (`medsearch-api keys create`) sent as 'Authorization: Bearer KEY'; the web
    page asks for it. The web page is at /, interactive documentation at /docs.
    """
    import uvicorn

    from search_api.app import StartupError, build_access, build_service, create_app

    settings = load_settings(**options)
    if open_mode and not is_loopback(settings.host):
        click.echo(f"error: --open serves patient data without authentication and is refused on {settings.host}; "
                   "bind to 127.0.0.1, or create API keys (medsearch-api keys create)", err=True)
        sys.exit(2)
    if not open_mode and settings.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        click.echo(f"error: serving on every address ({settings.host}) needs MEDSEARCH_ALLOWED_HOSTS: the host "
                   "names clients use (for example medsearch.hospital.org), or * to accept any", err=True)
        sys.exit(2)
    configure_logging(settings.log_level)
    return_large_buffers()  # memory goes back after a large upload
    try:
        service = build_service(settings)  # first: a missing database is the first thing to say
        access = build_access(settings, open_mode)
        if access.store is not None and not access.store.has_active_keys():
            raise StartupError(f"no API keys for {settings.db_dir}: create one with `medsearch-api keys create "
                               f"--db {settings.db_dir} --role clinician --name NAME`, or serve a loopback demo "
                               "with --open")
    except (StartupError, StorageError, MedsearchError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if open_mode:
        click.echo("OPEN MODE: no authentication, every caller is treated as a clinician (loopback only)", err=True)
    click.echo(f"medsearch API: {service.store.ntotal} vectors, model {service.encoder.fingerprint.name} on "
               f"{service.device}; http://{settings.host}:{settings.port}/", err=True)
    uvicorn.run(create_app(settings, service=service, access=access), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower())


@main.group()
def keys() -> None:
    """Manage API keys (stored hashed in DIR/access.sqlite)."""


def _access(db_dir: Path | None) -> Any:
    from storage.access import AccessStore

    settings = load_settings(db_dir=db_dir)
    if settings.access_database_url is None and not settings.db_dir.is_dir():
        click.echo(f"error: no medsearch database in {settings.db_dir}: the folder does not exist (index an "
                   "archive first with `medsearch-index run ARCHIVE --db FOLDER`, or fix --db)", err=True)
        sys.exit(2)
    with exit_on_errors():
        return AccessStore.open(settings.db_dir, settings.access_database_url)


@keys.command("create")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--role", type=click.Choice(["admin", "clinician", "researcher"]), required=True,
              help="admin: everything and the audit log; clinician: sees patient identifiers; researcher: "
              "patient identifiers replaced by pseudonyms.")
@click.option("--name", required=True, help="Who or what holds the key.")
def keys_create(db_dir: Path | None, role: str, name: str) -> None:
    """Create a key and print it once: it is stored hashed and cannot be shown again."""
    store = _access(db_dir)
    with exit_on_errors():
        info, plain = store.create_key(name, role)
    click.echo(f"key {info.id} ({info.role}, {info.name}) created; store it now, it is not shown again:")
    click.echo(plain)


@keys.command("list")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
def keys_list(db_dir: Path | None) -> None:
    """List keys (never their secrets)."""
    with exit_on_errors():
        found = _access(db_dir).list_keys()
    for info in found:
        state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
        click.echo(f"{info.id}  {info.role:10} {state:24} {info.created_at:%Y-%m-%d %H:%M}  {info.name}")


@keys.command("revoke")
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.argument("key_id")
def keys_revoke(db_dir: Path | None, key_id: str) -> None:
    """Revoke a key by its id (the part after msk_)."""
    with exit_on_errors():
        revoked = _access(db_dir).revoke(key_id)
    if not revoked:
        click.echo(f"error: no active key {key_id}", err=True)
        sys.exit(1)
    click.echo(f"key {key_id} revoked")


@main.command()
@click.option("--db", "db_dir", type=click.Path(path_type=Path), help="Database folder.")
@click.option("--since", type=click.DateTime(), help="Only records from this time on (UTC).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", type=click.File("w"), default="-", help="File to write [default: standard output].")
def audit(db_dir: Path | None, since: Any, fmt: str, out: Any) -> None:
    """Export the audit log: every search, view, preview and classification with key id, role, time,
    query kind and result ids (never query texts or images), and failed authentications with the
    client address. CSV cells that would start a spreadsheet formula are escaped."""
    import json

    from core.csvsafe import write_csv

    fields = ["id", "at", "key_id", "role", "action", "query_kind", "result_ids", "status", "client"]
    with exit_on_errors():
        records = list(_access(db_dir).audit(since=since))
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record) + "\n")
        return
    write_csv(out, fields, ([*(record[name] for name in fields[:6]), " ".join(map(str, record["result_ids"])),
                             record["status"], record["client"]] for record in records))


main.add_command(search)  # search_api/cli_search.py

if __name__ == "__main__":  # pragma: no cover
    main()
