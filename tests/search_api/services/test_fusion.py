"""A hybrid query's two windows (search_api/services/fusion.py Windows): read at once where the image
window is slow, one after the other where it is not."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from search_api.services.fusion import Windows


def busy(ms: float) -> None:
    until = time.thread_time() + ms / 1000
    while time.thread_time() < until:
        pass


def test_a_slow_image_window_is_read_while_the_reports_are():
    with ThreadPoolExecutor(2) as pool:
        windows = Windows(pool, beside_ms=1.0)
        assert windows.read(lambda: [1, 2], lambda: busy(5) or [3, 1]) == ([1, 2], [3, 1])  # the first: in turn
        assert windows.image_ms is not None and windows.image_ms >= 5
        both = threading.Barrier(2, timeout=10)  # broken (an error) unless the two calls run at the same time

        def meet(window: list[int]) -> list[int]:
            both.wait()
            return window

        assert windows.read(lambda: meet([1, 2]), lambda: meet([3, 1])) == ([1, 2], [3, 1])


def test_a_fast_image_window_is_read_after_the_reports():
    order: list[tuple[str, threading.Thread]] = []
    with ThreadPoolExecutor(2) as pool:
        windows = Windows(pool, beside_ms=1.0)
        for _ in range(3):
            windows.read(lambda: order.append(("reports", threading.current_thread())),
                         lambda: order.append(("images", threading.current_thread())))
    assert order == [("reports", threading.main_thread()), ("images", threading.main_thread())] * 3
    assert windows.image_ms is not None and windows.image_ms < 1.0


def test_a_failed_report_window_waits_for_the_image_window_and_raises():
    finished: list[str] = []

    def images() -> list[int]:
        busy(2)
        time.sleep(0.2)
        finished.append("images")
        return []

    def reports() -> list[int]:
        raise LookupError("the report index is gone")

    with ThreadPoolExecutor(2) as pool:
        windows = Windows(pool, beside_ms=1.0)
        windows.image_ms = 2.0  # slow image windows: read beside
        with pytest.raises(LookupError, match="report index"):
            windows.read(reports, images)
        assert finished == ["images"]  # nothing of the failed query still runs
