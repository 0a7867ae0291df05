"""`medsearch-api`: serve the search API over an index built by medsearch-index."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

import click

from core.settings import Settings

logger = logging.getLogger("search_api")


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
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(**options: Any) -> None:
    """Load the model and the index once, then answer HTTP requests.

    Endpoints: POST /search/text, POST /search/image, GET /images/{id}, GET /health;
    interactive documentation at /docs.
    """
    import uvicorn

    from search_api.app import StartupError, build_service, create_app

    settings = Settings(**{key: value for key, value in options.items() if value is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    for noisy in ("transformers", "huggingface_hub", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        service = build_service(settings)
    except StartupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not is_loopback(settings.host):
        logger.warning("listening on %s without authentication: anyone who can reach this port sees patient "
                       "metadata. Bind to 127.0.0.1 unless the network is trusted.", settings.host)
    click.echo(f"medsearch API: {service.store.ntotal} vectors, model {service.encoder.fingerprint.name} on "
               f"{service.device}; http://{settings.host}:{settings.port}/docs", err=True)
    uvicorn.run(create_app(settings, service=service), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower())


if __name__ == "__main__":  # pragma: no cover
    main()
