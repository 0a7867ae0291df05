"""Logging set-up shared by the command-line entry points (library code only ever logs)."""

from __future__ import annotations

import logging

NOISY = ("transformers", "huggingface_hub", "httpx", "filelock", "alembic")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pydicom logs decoder tracebacks for files medsearch reports itself, once, with their path.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    # dicomweb-client logs every request at INFO and its headers (a bearer token) at DEBUG: keep it to
    # warnings; medsearch reports its requests' outcomes itself. urllib3 would log every URL.
    for name in ("dicomweb_client", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
