"""A real headless Chromium (Debian's, driven by Playwright; no browser download) against a real uvicorn
server on a loopback socket: the helpers of the page tests (the `browser` fixture is in conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--disable-quic"]


def serve(api_settings: Settings, encoder: HFEncoder, access: AccessControl) -> Iterator[str]:
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service = build_service(api_settings, encoder=encoder)
    app = create_app(api_settings, service=service, access=access)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)
    service.close()


def launch_browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


def browser_page(browser: Any, url: str, **options: Any) -> Iterator[Any]:
    """A page at `url`; fails the test on any error the page's console reports (a script error, a
    request the Content-Security-Policy blocked)."""
    page = browser.new_page(viewport={"width": 1400, "height": 950}, **options)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    yield page
    page.close()
    unexpected = [e for e in errors if "status of 4" not in e]  # answers the test provoked (401, 422...)
    assert unexpected == [], unexpected


def screenshot(page: Any, name: str, fallback: Path, full_page: bool = True) -> Path:
    """A screenshot into MEDSEARCH_SCREENSHOT_DIR (make screenshots: data/screenshots); of the viewport
    when a dialog is open (it is fixed to the viewport)."""
    folder = Path(os.environ.get("MEDSEARCH_SCREENSHOT_DIR", fallback))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    return path
