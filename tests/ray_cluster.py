"""A real Ray cluster for the tests of the Ray engine: `ray start --head` on loopback with 2 CPUs and no GPU,
started once per session (token authentication on, as `ray start` sets it up), and the TCP listeners
it opened, read from /proc."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def listening() -> set[tuple[str, int]]:
    """Every listening TCP socket of the machine: (address, port)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] != "0A":  # LISTEN
                continue
            host, port = parts[1].split(":")
            raw = bytes.fromhex(host)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


@dataclass(frozen=True)
class RayCluster:
    address: str
    listeners: frozenset[tuple[str, int]]  # what `ray start` opened


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("MEDSEARCH_REQUIRE_RAY") == "1":
            pytest.fail("MEDSEARCH_REQUIRE_RAY=1 but ray is not installed (pip install -e '.[ray]')")
        pytest.skip("the ray extra is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    require_ray()
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, **RAY_ENV}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="msray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    before = listening()
    started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                              "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
                              "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180,
                             check=False)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield RayCluster(f"127.0.0.1:{port}", frozenset(listening() - before))
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
