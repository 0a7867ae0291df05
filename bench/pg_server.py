"""A throwaway local PostgreSQL server for the benchmarks (the tests have their own in tests/postgres.py):
started where PostgreSQL is installed, on a free loopback port, removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _as_postgres(*args: str) -> None:
    command = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=300)


@contextlib.contextmanager
def postgres_server(url: str | None = None) -> Iterator[str | None]:
    """`url` itself when given; else a new server's URL, or None where PostgreSQL is not installed."""
    if url is not None:
        yield url
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        yield None
        return
    bin_dir = os.path.dirname(binaries[-1])
    root = Path(tempfile.mkdtemp(prefix="medsearch-bench-pg-", dir="/var/tmp"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        _as_postgres(f"{bin_dir}/initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust")
        _as_postgres(f"{bin_dir}/pg_ctl", "-D", str(root / "data"), "-o", f"-p {port} -k /tmp -c "
                     "listen_addresses=127.0.0.1 -c shared_buffers=2GB -c work_mem=64MB", "-w", "-l",
                     str(root / "log"), "start")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            _as_postgres(f"{bin_dir}/pg_ctl", "-D", str(root / "data"), "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
