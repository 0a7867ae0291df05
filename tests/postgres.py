"""A real PostgreSQL server for the tests that need one: a throwaway cluster on a free loopback port,
started once per session when MEDSEARCH_TEST_POSTGRES=1 (`.ci/run` sets it after installing
PostgreSQL); each test takes a fresh database of its own from it."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

ENABLED = os.environ.get("MEDSEARCH_TEST_POSTGRES") == "1"
needs_postgres = pytest.mark.skipif(not ENABLED, reason="set MEDSEARCH_TEST_POSTGRES=1 to test against a real "
                                    "PostgreSQL (docs/operations.md)")
_counter = itertools.count()


def run_as_postgres(*args: str) -> None:
    command = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's URL (database `postgres`)."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.fail("MEDSEARCH_TEST_POSTGRES=1 but PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = os.path.dirname(binaries[-1])
    root = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        for parent in list(root.parents)[:3]:  # the server user must be able to reach its folder
            parent.chmod(parent.stat().st_mode | 0o011)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_as_postgres(f"{bin_dir}/initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust")
    run_as_postgres(f"{bin_dir}/pg_ctl", "-D", str(root / "data"), "-o",
                    f"-p {port} -k /tmp -c listen_addresses=127.0.0.1", "-w", "-l", str(root / "log"), "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run_as_postgres(f"{bin_dir}/pg_ctl", "-D", str(root / "data"), "-w", "stop")


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty database on the session's server."""
    name = f"medsearch_test_{os.getpid()}_{next(_counter)}"
    engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"
