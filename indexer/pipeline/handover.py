"""Decoded pixels from a worker process to the main process through shared memory.

Sent through the result pipe, a 448 px image (200 KB) cost the worker path ~5 ms an image (chunked
pipe writes and the result thread's reads; measured with bench/pipeline.py: 59 against 95 images/s in
one process). Instead the worker copies an outcome's frames into one POSIX shared-memory segment and
sends its name; the main process copies them out (a memcpy) and unlinks it.

A segment is named after the main process (`msxPID_...`): `sweep` removes segments of a main process
that is gone (a killed run) and `LoadPool.close` those of its own that were never taken (a cancelled
run), so none outlives its run for long.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

PREFIX = "msx"
SHM_DIR = Path("/dev/shm")
_COUNTER = itertools.count()


@dataclass(frozen=True)
class SharedPixels:
    name: str
    layout: tuple[tuple[int, tuple[int, ...]], ...]  # each frame's offset and shape (uint8)


def send(frames_pixels: list[np.ndarray], owner: int) -> SharedPixels | None:
    """Copy the arrays into a new segment (None when there is nothing to send)."""
    total = sum(pixels.nbytes for pixels in frames_pixels)
    if total == 0:
        return None
    name = f"{PREFIX}{owner}_{os.getpid()}_{next(_COUNTER)}"
    segment = shared_memory.SharedMemory(name=name, create=True, size=total)
    resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]  # main unlinks it
    layout, offset = [], 0
    try:
        for pixels in frames_pixels:
            np.ndarray(pixels.shape, np.uint8, segment.buf, offset)[...] = pixels
            layout.append((offset, tuple(pixels.shape)))
            offset += pixels.nbytes
    finally:
        segment.close()
    return SharedPixels(name, tuple(layout))


def receive(shared: SharedPixels) -> list[np.ndarray]:
    """The arrays, copied out of the segment, which is then removed."""
    segment = shared_memory.SharedMemory(name=shared.name)
    try:
        return [np.ndarray(shape, np.uint8, segment.buf, offset).copy() for offset, shape in shared.layout]
    finally:
        segment.close()
        segment.unlink()


def sweep(owner: int | None = None) -> int:
    """Remove the segments of `owner` (a main process id), or of main processes no longer running."""
    removed = 0
    for path in SHM_DIR.glob(f"{PREFIX}*_*_*") if SHM_DIR.is_dir() else []:
        pid = path.name[len(PREFIX):].split("_", 1)[0]
        if not pid.isdigit() or (int(pid) != owner if owner is not None else _alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
