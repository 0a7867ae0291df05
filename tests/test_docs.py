"""The manual as a newcomer meets it: README's tour and every shell block of docs/ that a user would run
against the demo are run against `make demo OFFLINE=1` (its own folders, a free port) and must answer as
shown; a block that cannot run here says why in a `<!-- not run here: ... -->` line above it. The site
itself builds with `mkdocs build --strict` (make test runs it too)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
NOT_RUN = re.compile(r"^<!-- not run here: (?P<why>\S.*\S) -->$")
MARK = "@@@medsearch-docs"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    text: str
    why_not: str | None  # None: runnable against the demo

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def shell_blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().split("\n")
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\w*)", lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if fence.group(1) in SHELL:
            before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marked = NOT_RUN.match(before)
            found.append(Block(page, index + 1, fence.group(1), "\n".join(lines[index + 1:end]),
                               marked.group("why") if marked else None))
        index = end + 1
    return found


BLOCKS = [block for page in PAGES for block in shell_blocks(page)]
RUNNABLE = [block for block in BLOCKS if block.why_not is None]


def console_steps(text: str) -> list[tuple[str, str]]:
    """A console block's commands (after `$ `, with `\\` continuations) and the output shown under each."""
    steps: list[tuple[str, list[str]]] = []
    continuing = False
    for line in text.split("\n"):
        if line.startswith("$ ") or continuing:
            command = line[2:] if not continuing else line
            if continuing:
                steps[-1] = (steps[-1][0] + "\n" + command, steps[-1][1])
            else:
                steps.append((command, []))
            continuing = line.endswith("\\")
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return [(command, "\n".join(shown).strip()) for command, shown in steps]


def matches_shown(shown: str, answer: str) -> bool:
    """The answer is what is shown, where `...` stands for any text (scores of a random model, long JSON)."""
    pattern = ".*?".join(re.escape(part) for part in shown.split("..."))
    normalised = "\n".join(line.rstrip() for line in answer.strip().split("\n"))
    return re.fullmatch(pattern, normalised, re.DOTALL) is not None


def test_the_tour_and_the_runnable_blocks_are_found():
    tour = [block for block in RUNNABLE if block.page.name == "README.md"]
    assert len(tour) >= 4 and all(block.language == "console" for block in tour)
    assert any(block.page.name == "reports.md" for block in RUNNABLE)
    steps = console_steps(tour[1].text)
    assert steps[0][0].startswith(".venv/bin/medsearch-api search") and "report search" in steps[0][1]
    assert matches_shown("a ... c", "a long b c") and not matches_shown("a ... c", "a b d")
    assert all(block.why_not for block in BLOCKS if block.page.name == "install.md" and "make" in block.text)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """`make demo OFFLINE=1` as README says, in its own folders and on a free port."""
    if shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the demo needs make and the project's .venv (make install)")
    folder = tmp_path_factory.mktemp("demo")
    port = free_port()
    log = (folder / "demo.log").open("w")
    server = subprocess.Popen(
        ["make", "-C", str(ROOT), "demo", "OFFLINE=1", f"PORT={port}", f"SAMPLE={folder / 'sample-archive.zip'}",
         f"RANDOM_MODEL={folder / 'random-siglip'}", f"DEMO_DB={folder / 'demo-db'}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (folder / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not serve within 15 minutes"
            time.sleep(0.5)
        work = folder / "shell"
        work.mkdir()
        (work / ".venv").symlink_to(ROOT / ".venv")  # the docs' commands name .venv/bin/...
        yield port, work
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def run_script(commands: list[str], port: int, work: Path) -> list[tuple[int, str]]:
    """The commands in one shell (a variable set by one is there for the next), as a user types them,
    the demo's port put in place of 8000; each one's exit status and output."""
    script = "\n".join(f"{command.replace(':8000', f':{port}')}\nprintf '\\n{MARK} %d\\n' $?"
                       for command in commands)
    environment = {**os.environ, "MEDSEARCH_API_URL": f"http://127.0.0.1:{port}",
                   "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("MEDSEARCH_API_KEY", None)
    done = subprocess.run(["bash", "-c", script], cwd=work, env=environment, capture_output=True, text=True,
                          timeout=600, check=False)
    parts = re.split(rf"\n{MARK} (\d+)\n", "\n" + done.stdout)
    answers = [(int(parts[i + 1]), parts[i].strip()) for i in range(0, len(parts) - 1, 2)]
    assert len(answers) == len(commands), done.stdout + done.stderr
    return answers


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.name for block in RUNNABLE])
def test_a_shell_block_answers_as_shown(block: Block, demo: tuple[int, Path]):
    port, work = demo
    for tool in ("curl", "jq"):
        if re.search(rf"\b{tool}\b", block.text) and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    if block.language == "console":
        steps = console_steps(block.text)
        answers = run_script([command for command, _ in steps], port, work)
        for (command, shown), (status, answer) in zip(steps, answers, strict=True):
            assert status == 0, f"{block.name}: `{command}` exited {status}: {answer}"
            assert matches_shown(shown, answer), f"{block.name}: `{command}` answered\n{answer}\nnot\n{shown}"
    else:
        commands = [line for line in block.text.split("\n") if line.strip() and not line.startswith("#")]
        for command, (status, answer) in zip(commands, run_script(commands, port, work), strict=True):
            assert status == 0, f"{block.name}: `{command}` exited {status}: {answer}"
            assert '{"detail"' not in answer and "Error" not in answer, f"{block.name}: `{command}`: {answer}"


def test_the_site_builds_strict(tmp_path: Path):
    mkdocs = ROOT / ".venv" / "bin" / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is part of the dev install (make install)")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "/search/text" in api and "/images/{image_id}/explain" in api
    assert (tmp_path / "site" / "reference" / "openapi.json").is_file()
    assert "pleural effusion:negated" in (tmp_path / "site" / "install" / "index.html").read_text()
