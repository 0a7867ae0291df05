"""Stage 2: turn one archive file into model-ready frames, or a reason why not.

Runs in worker processes (see `LoadPool`) so that decoding and the model's preprocessing overlap
with encoding in the main process. Workers return an `Outcome`, never raise: exceptions with
custom constructors do not survive pickling, and one bad file must not stop the run.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.deid import deidentify
from core.errors import ImageError, NoPixelDataError, NotAnImageError
from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_frames
from core.imaging.metadata import ImageMetadata
from core.model.encoder import ImagePreprocessor, PreprocessorSpec
from core.sources import Entry, Source, SourceOptions, open_source
from indexer.pipeline import handover
from indexer.pipeline.handover import SharedPixels
from indexer.pipeline.manifest import ManifestRow


@dataclass(frozen=True)
class LoadOptions:
    render: RenderOptions = field(default_factory=RenderOptions)
    max_file_bytes: int = 1024**3
    deid_secret: str | None = None  # set: store keyed pseudonyms instead of patient IDs
    deid_keep_columns: tuple[str, ...] = ()  # de-identifying: manifest columns still stored
    deid_keep_reports: bool = False  # de-identifying: store report text (identifying)
    reduced: bool = False  # decode at the model's input size (core.imaging.preprocess.REDUCED): set where it is known


def at_model_size(options: LoadOptions, side: int) -> LoadOptions:
    """The options a worker decodes with, once it knows the model's input side."""
    return replace(options, render=replace(options.render, reduce_to=side)) if options.reduced else options


@dataclass
class Task:
    """One file to look at. `data` is given for archive members; folder files are read by the worker."""

    entry: Entry
    source: str
    data: bytes | None
    file_path: str | None
    known_sha256: str | None
    manifest_row: ManifestRow | None
    archive: str | None = None  # a source the worker opens to read the entry itself (a zip file)


@dataclass
class Frame:
    """One image ready for the model: its pixel hash, its pixels at the model's input size (uint8, grey
    as one channel: core.model.inputs) and its metadata (and, once encoded elsewhere, its vector)."""

    pixel_sha256: str
    pixels: np.ndarray
    metadata: ImageMetadata
    kind: str
    vector: np.ndarray | None = None


@dataclass
class Outcome:
    entry: Entry
    status: str  # "frames", "same-content", "skipped", "failed"
    sha256: str | None = None
    reason: str = ""
    frames: list[Frame] = field(default_factory=list)
    shared: SharedPixels | None = None  # the frames' pixels, in shared memory on their way from a worker


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_hash(pixels: np.ndarray) -> str:
    """Identity of an image's content: the rendered pixels and their shape."""
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def merge_manifest(meta: ImageMetadata, row: ManifestRow | None) -> ImageMetadata:
    """Manifest values fill what the image itself left empty; labels, report and extras are added."""
    if row is None:
        return meta
    fills = {name: value for name, value in row.values.items() if getattr(meta, name, None) in (None, "")}
    return replace(meta, **fills, labels=list(dict.fromkeys([*meta.labels, *row.labels])),
                   report_text=meta.report_text or row.report_text, extra={**meta.extra, **row.extra})


Preprocess = Callable[[list[np.ndarray]], list[np.ndarray]]  # rendered RGB -> uint8 at the model's input size


def load(task: Task, options: LoadOptions, preprocessor: Preprocess) -> Outcome:
    """Read (if needed), hash, decode and preprocess one file."""
    entry = task.entry
    data = task.data
    if data is None and task.archive is not None:
        entry, fetched = _opened(task.archive, options.max_file_bytes).fetch(entry)
        if not isinstance(fetched, bytes):
            return Outcome(entry, "failed", reason=f"{task.source}: cannot read file: {fetched}")
        data = fetched
    if data is None:
        try:
            with Path(task.file_path or "").open("rb") as handle:  # it may have grown since it was listed
                data = handle.read(options.max_file_bytes + 1)
        except OSError as exc:
            return Outcome(entry, "failed", reason=f"{task.source}: cannot read file: {exc.strerror or exc}")
    if len(data) > options.max_file_bytes:
        return Outcome(entry, "failed", reason=f"{task.source}: file of more than {options.max_file_bytes} bytes "
                       "exceeds the limit (setting MEDSEARCH_MAX_FILE_BYTES)")
    sha = sha256_of(data)
    if sha == task.known_sha256:
        return Outcome(entry, "same-content", sha256=sha)
    try:
        images = load_image_frames(data, task.source, options.render)
        model_pixels = preprocessor([image.pixels for image in images])
    except (NotAnImageError, NoPixelDataError) as exc:
        return Outcome(entry, "skipped", sha, str(exc))
    except ImageError as exc:
        return Outcome(entry, "failed", sha, str(exc))
    except Exception as exc:  # a decoder bug must cost one file, not the run
        return Outcome(entry, "failed", sha, f"{task.source}: unexpected {type(exc).__name__}: {exc}")
    frames = []
    for image, values in zip(images, model_pixels, strict=True):
        meta = merge_manifest(image.metadata, task.manifest_row)
        if options.deid_secret:
            meta = deidentify(meta, options.deid_secret, options.deid_keep_columns, options.deid_keep_reports)
        frames.append(Frame(pixel_hash(image.pixels), values, meta, image.kind))
    return Outcome(entry, "frames", sha, frames=frames)


_WORKER: dict[str, Any] = {}  # per worker process: its options and preprocessor, set by _init_worker
_SOURCES: dict[str, Source] = {}  # per process: the archives it opened to read members from


def _opened(archive: str, max_member_bytes: int) -> Source:
    if archive not in _SOURCES:
        _SOURCES[archive] = open_source(archive, SourceOptions(max_member_bytes))
    return _SOURCES[archive]


def _init_worker(options: LoadOptions, spec: PreprocessorSpec, owner: int) -> None:
    """Imports only: the model's processor is loaded at the first task, which comes after the main
    process loaded the model (so it is in the local cache, and a worker never contacts the hub)."""
    import logging

    from core.memory import return_large_buffers

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    return_large_buffers()
    _WORKER["options"] = options
    _WORKER["spec"] = spec
    _WORKER["owner"] = owner


def _load_in_worker(task: Task) -> Outcome:
    if "preprocessor" not in _WORKER:
        preprocessor = _WORKER["preprocessor"] = ImagePreprocessor.load(_WORKER["spec"])  # ModelLoadError ends it
        _WORKER["options"] = at_model_size(_WORKER["options"], preprocessor.input.decode_side)
    outcome = load(task, _WORKER["options"], _WORKER["preprocessor"])
    try:
        outcome.shared = handover.send([frame.pixels for frame in outcome.frames], _WORKER["owner"])
    except OSError:  # no room in shared memory: the pixels go through the result pipe
        return outcome
    for frame in outcome.frames if outcome.shared else []:
        frame.pixels = _SENT
    return outcome


_SENT = np.empty(0, dtype=np.uint8)


class LoadPool:
    """Runs `load` over tasks in order, `workers` processes ahead of the consumer (0: in this process)."""

    def __init__(self, workers: int, options: LoadOptions, spec: PreprocessorSpec,
                 local: Preprocess | None = None, local_side: int = 0, eager: bool = True) -> None:
        """`eager`: start the workers now, so that their imports overlap whatever the caller does next
        (loading the model); otherwise at the first file that needs decoding (a rerun with nothing new
        starts none)."""
        self._workers = workers
        self._options = options
        self._spec = spec
        self._local = local
        self._local_side = local_side
        self.reduced = options.reduced
        self._executor: ProcessPoolExecutor | None = None
        if workers > 0 and eager:
            self._start()

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker,
                                                 initargs=(self._options, self._spec, os.getpid()))
            handover.sweep()  # segments of runs that were killed
            for _ in range(self._workers):
                self._executor.submit(int)
        return self._executor

    def map(self, tasks: Iterable[Task | Outcome]) -> Iterator[Outcome]:
        """Outcomes in task order. Items that already are Outcomes pass through in place."""
        if self._workers == 0:
            local: Preprocess
            if self._local is None:
                loaded = ImagePreprocessor.load(self._spec)
                local, side = loaded, loaded.input.decode_side
            else:
                local, side = self._local, self._local_side
            options = at_model_size(self._options, side)
            for task in tasks:
                yield task if isinstance(task, Outcome) else load(task, options, local)
            return
        window: deque[Future[Outcome] | Outcome] = deque()
        limit = max(4, self._workers * 8)  # bounded read-ahead: memory stays flat on huge archives
        for task in tasks:
            window.append(task if isinstance(task, Outcome) else self._start().submit(_load_in_worker, task))
            while len(window) > limit:
                yield self._result(window.popleft())
        while window:
            yield self._result(window.popleft())

    @staticmethod
    def _result(item: Future[Outcome] | Outcome) -> Outcome:
        outcome = item if isinstance(item, Outcome) else item.result()
        if outcome.shared is not None:
            for frame, pixels in zip(outcome.frames, handover.receive(outcome.shared), strict=True):
                frame.pixels = pixels
            outcome.shared = None
        return outcome

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            handover.sweep(os.getpid())  # what finished but was never taken
