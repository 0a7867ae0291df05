"""The two windows of a hybrid query are read at once (search_api/services/fusion.py both_windows)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from search_api.services.fusion import both_windows


def test_the_image_window_is_read_while_the_reports_are():
    both = threading.Barrier(2, timeout=10)  # broken (an error) unless the two calls run at the same time

    def images() -> list[int]:
        both.wait()
        return [3, 1]

    def reports() -> list[int]:
        both.wait()
        return [1, 2]

    with ThreadPoolExecutor(2) as pool:
        assert both_windows(reports, images, pool) == ([1, 2], [3, 1])


def test_a_failed_report_window_waits_for_the_image_window_and_raises():
    finished: list[str] = []

    def images() -> list[int]:
        time.sleep(0.2)
        finished.append("images")
        return []

    def reports() -> list[int]:
        raise LookupError("the report index is gone")

    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(LookupError, match="report index"):
            both_windows(reports, images, pool)
        assert finished == ["images"]  # nothing of the failed query still runs
