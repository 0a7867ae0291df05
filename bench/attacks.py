"""The attacks of issue 13 against a checkout of medsearch (this one, or an older one for a before/after
table): what each costs the server (peak resident memory growth, read from /proc) and what it answers.

    python -m bench.attacks --model data/random-siglip [--checkout DIR] [--label NAME]

The checkout's own code serves (PYTHONPATH=DIR); bombs are made once, in a temp folder, never in
memory. Results: bench/results/attacks_<label>.json, and a table on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import write_result
from tests.hostile import deflated_dicom, peak_kb, png_bomb, zip_bomb

MB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def command(checkout: Path, module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run(checkout: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return subprocess.run(command(checkout, module, *args), cwd=checkout, env=env, capture_output=True, text=True,
                          check=False, timeout=900)


def peak_of_run(checkout: Path, module: str, *args: str) -> tuple[int, str]:
    """(exit status, last line of output) of a command, and its peak memory in MB via wait4."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    process = subprocess.Popen(command(checkout, module, *args), cwd=checkout, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.strip() and "transformers" not in line]
    return usage.ru_maxrss // 1024, f"exit {process.returncode}: {lines[-1][:110] if lines else ''}"


def send_raw(port: int, head: str, body_bytes: int) -> str:
    """Send a request whose body is `body_bytes` (zeros after a JSON or multipart start); the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(head.encode() + b"\r\n")
            left = body_bytes
            while left > 0:
                piece = min(left, MB)
                sock.sendall(b"\0" * piece)
                left -= piece
        except OSError:
            pass  # the server answered and closed before the whole body: what it should do
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    return answer.split(b"\r\n", 1)[0].decode() or "(connection closed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "random-siglip")
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    checkout, model = args.checkout.resolve(), args.model.resolve()
    work = Path(tempfile.mkdtemp(prefix="medsearch-attacks-"))
    rows: list[dict[str, object]] = []
    try:
        archive = work / "archive"
        archive.mkdir()
        from indexer.sample import pydicom_test_files

        for name in ("CT_small.dcm", "MR_small.dcm"):
            shutil.copy2(pydicom_test_files() / name, archive / name)
        db = work / "db"
        indexed = run(checkout, "indexer.cli.main", "run", str(archive), "--db", str(db), "--model", str(model),
                      "--no-progress")
        assert indexed.returncode == 0, indexed.stderr
        key = run(checkout, "search_api.cli", "keys", "create", "--db", str(db), "--role", "clinician", "--name",
                  "bench").stdout.strip().splitlines()[-1]
        bombs = {"deflate-1g": deflated_dicom(work / "lie.dcm", 512, 512, 1, 1024**3),
                 "deflate-under-limit": deflated_dicom(work / "big.dcm", 8192, 8192, 1, 8192 * 8192 * 2),
                 "png": png_bomb(work / "bomb.png", 9400)}
        rows += serve_attacks(checkout, db, key, bombs)
        rows += open_mode_attack(checkout, db)
        zipped = zip_bomb(work / "bomb.zip", 1024**3)
        for name, target in (("indexer: the two-file archive (baseline)", archive),
                             ("indexer: 1 MB zip whose member is 1 GiB", zipped),
                             ("indexer: deflated DICOM inflating to 1 GiB", work / "lie-folder")):
            if target.name == "lie-folder":
                target.mkdir()
                shutil.copy2(bombs["deflate-1g"], target / "lie.dcm")
            peak, said = peak_of_run(checkout, "indexer.cli.main", "run", str(target), "--db",
                                     str(work / f"db-{target.name}"), "--model", str(model), "--workers", "0",
                                     "--no-progress", "--log-level", "ERROR")
            rows.append({"attack": name, "answer": said, "peak_mb": peak})
        full = disk_full_attack(checkout, model, archive, work)
        if full:
            rows.append(full)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        print(f"{row['attack']:58} {row.get('growth_mb', row.get('peak_mb', '')):>7} MB  {row['answer']}")
    write_result(f"attacks_{args.label}", {"checkout": str(checkout), "rows": rows})


def serve_attacks(checkout: Path, db: Path, key: str, bombs: dict[str, Path]) -> list[dict[str, object]]:
    from tests.hostile import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    server = subprocess.Popen(command(checkout, "search_api.cli", "serve", "--db", str(db), "--port", str(port),
                                      "--log-level", "WARNING"), cwd=checkout, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, rows = f"http://127.0.0.1:{port}", []
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        headers = {"X-API-Key": key}

        def measured(name: str, attack: object) -> None:
            before = peak_kb(server.pid)
            answer = attack() if callable(attack) else attack
            rows.append({"attack": name, "answer": answer, "growth_mb": (peak_kb(server.pid) - before) // 1024})

        measured("no key: 200 MB JSON body", lambda: send_raw(port, (
            "POST /search/text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 * MB}\r\n"), 200 * MB))
        measured("no key: 300 MB multipart upload", lambda: send_raw(port, (
            "POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            f"Content-Length: {300 * MB}\r\n"), 300 * MB))
        for name, label in (("deflate-1g", "upload: deflated DICOM inflating to 1 GiB (1 MB)"),
                            ("deflate-under-limit", "upload: deflated 8192x8192 CT under the old pixel limit"),
                            ("png", "upload: 1-bit PNG of 9400x9400 (10.8 KB)")):
            data = bombs[name].read_bytes()
            measured(label, lambda data=data: httpx.post(f"{url}/search/image", files={"file": ("x", data)},
                                                         headers=headers, timeout=600).status_code)
        data = bombs["deflate-under-limit"].read_bytes()
        with ThreadPoolExecutor(3) as pool:
            measured("upload: three of those at once", lambda: sorted(pool.map(
                lambda _: httpx.post(f"{url}/search/image", files={"file": ("x", data)}, headers=headers,
                                     timeout=600).status_code, range(3))))
        preview = httpx.get(f"{url}/images/1/preview", headers=headers, timeout=60)
        rows.append({"attack": "preview Cache-Control", "answer": preview.headers.get("cache-control"),
                     "growth_mb": 0})
        wrong = [httpx.get(f"{url}/images/1", headers={"X-API-Key": f"msk_guess{i}_x"}).status_code
                 for i in range(12)]
        rows.append({"attack": "12 wrong keys from one address", "answer": wrong, "growth_mb": 0})
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def open_mode_attack(checkout: Path, db: Path) -> list[dict[str, object]]:
    from tests.hostile import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    server = subprocess.Popen(command(checkout, "search_api.cli", "serve", "--db", str(db), "--port", str(port),
                                      "--open", "--log-level", "WARNING"), cwd=checkout, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        answer = httpx.post(f"http://127.0.0.1:{port}/search/text", json={"query": "x"},
                            headers={"Host": "attacker.example"}).status_code
    finally:
        server.terminate()
        server.wait(timeout=30)
    return [{"attack": "open mode, Host: attacker.example", "answer": answer, "growth_mb": 0}]


def disk_full_attack(checkout: Path, model: Path, archive: Path, work: Path) -> dict[str, object] | None:
    disk = work / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], check=False,
                      capture_output=True).returncode != 0:
        return None
    try:
        from indexer.sample import pydicom_test_files

        many = work / "many"
        many.mkdir()
        for path in sorted(pydicom_test_files().glob("*.dcm"))[:60]:
            shutil.copy2(path, many / path.name)
        done = run(checkout, "indexer.cli.main", "run", str(many), "--db", str(disk / "db"), "--model", str(model),
                   "--workers", "0", "--no-progress", "--log-level", "ERROR")
        runs = run(checkout, "indexer.cli.main", "runs", "--db", str(disk / "db"))
        said = [line for line in done.stderr.splitlines() if "error" in line.lower() or "Error" in line]
        return {"attack": "disk full during a run; then `runs`", "peak_mb": "",
                "answer": f"exit {done.returncode} ({len(done.stderr.splitlines())} stderr lines: "
                          f"{(said[-1] if said else '')[:70]}); runs exit {runs.returncode}"}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


if __name__ == "__main__":
    main()
