"""The Ray engine: the same run as the local engine, scheduled on a Ray cluster (Ray Data).

    driver   lists the source, plans work units (indexer/engines/units.py), commits finished shards
    tasks    read and decode a unit's files themselves (CPU; from the shared filesystem, an archive
             member, or the PACS with credentials from the worker's own environment): no file bytes
             pass through the driver
    actors   encode (one model load each, `num_gpus=1` where the cluster has GPUs), refusing to start
             with a model whose fingerprint differs from the driver's, and write each unit as a shard
    driver   commits each shard in one transaction that records the unit's id (a repeated commit is a
             no-op), then deletes it; the database stays the one source of truth, FAISS derives from it

A killed driver's rerun first commits the shards its predecessor left (`recover`), without encoding
them again, then lists the source as usual. A killed task or actor is retried by Ray; a retry rewrites
the same shard (same name, write-then-rename) and its second commit changes nothing. A stage that
cannot be scheduled stops the run with an error after `stall_timeout_s`, never a silent hang.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from core.deid import pseudonym
from core.model.device import CPU_BATCH
from core.model.encoder import ImagePreprocessor, PreprocessorSpec
from core.sources import Source, SourceOptions, open_source
from indexer.engines.runner import task_for
from indexer.engines.units import WorkUnit, config_digest, leftover_shards, plan_units, read_shard, write_shard
from indexer.errors import IndexerError
from indexer.pipeline.encode import BatchEncoder, given_vectors
from indexer.pipeline.job import JobOptions
from indexer.pipeline.load import LoadOptions, Outcome, Task, at_model_size, load
from indexer.pipeline.model import ModelSpec
from indexer.pipeline.result import Progress, ProgressFactory, RunResult
from indexer.pipeline.scan import Listing
from indexer.pipeline.session import indexing_run
from storage.sql.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)
RECENT_BYTES = 256 * 1024**2  # of vectors an encoding actor keeps, to encode repeated pixels once
EXTRA = 'the Ray engine needs the "ray" extra: pip install -e ".[ray]" (or pip install "medsearch[ray]")'


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # HOST:PORT of a running cluster; None: a local one on loopback
    encoders: int | None = None  # encoding actors (default: the cluster's GPUs, else 1)
    files_per_unit: int = 32
    shard_dir: Path | None = None  # default: DB/shards (on a filesystem every node mounts)
    stall_timeout_s: float = 600.0
    decode_cpus: float = 1.0  # CPUs each decoding task reserves
    encoder_cpus: float = 1.0  # CPUs each encoding actor reserves


def import_ray() -> ModuleType:
    """Ray, imported only when the engine is asked for; IndexerError naming the extra when it is missing."""
    # without these Ray was seen to listen on every interface and to hang on a loopback address
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # its C++ parts log every retry otherwise
    try:
        import ray
        import ray.data
    except ImportError:
        raise IndexerError(EXTRA) from None
    return ray


def use_cluster_token() -> None:
    """A cluster started with `ray start` requires Ray's token authentication: a driver joins it with the
    cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, which `ray start` writes)."""
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (
        Path.home() / ".ray" / "auth_token").is_file()
    if has_token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (ValueError, OSError) as exc:
        raise IndexerError(f"--ray-address {address}: no Ray cluster answers there ({exc}); start one with "
                           "`ray start --head --port=PORT` (docs/ray.md) or leave the option out for "
                           "a local one") from None


# -- what runs on the cluster ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeContext:
    """What a decoding task needs; never a secret (the worker reads its own environment)."""

    max_member_bytes: int
    load: LoadOptions  # deid_secret left out
    deid_check: str | None  # the key check of the driver's de-identification key
    preprocessor: PreprocessorSpec


_WORKER: dict[str, Any] = {}  # per worker process: settings, opened sources, the model's processor


def _worker_state(context: DecodeContext, location: str) -> tuple[Source, ImagePreprocessor, LoadOptions]:
    from core.settings import Settings

    settings = _WORKER.setdefault("settings", Settings())
    key = f"source:{location}"
    if key not in _WORKER:
        _WORKER[key] = open_source(location, SourceOptions(context.max_member_bytes, settings.dicomweb_config()))
    if "preprocessor" not in _WORKER:
        _WORKER["preprocessor"] = ImagePreprocessor.load(context.preprocessor)
    options = at_model_size(context.load, _WORKER["preprocessor"].input.decode_side)
    if context.deid_check is not None:
        secret = settings.deid_secret.get_secret_value() if settings.deid_secret else ""
        if pseudonym("key-check", secret, "key") != context.deid_check:
            raise IndexerError("this worker's MEDSEARCH_DEID_SECRET differs from the driver's: every node must have "
                               "the same key, or the pseudonyms would not match")
        options = replace(options, deid_secret=secret)
    return _WORKER[key], _WORKER["preprocessor"], options


def decode_unit(row: dict[str, Any], context: DecodeContext) -> dict[str, Any]:
    """A CPU task: read and decode one unit's files (stages read and load). Units and outcomes travel
    pickled (Ray Data would try, and fail, to make Arrow columns of them)."""
    unit: WorkUnit = pickle.loads(row["unit"])
    source, preprocessor, options = _worker_state(context, unit.source)
    local = source.local_path("") is not None
    outcomes: list[Outcome] = []
    for item in unit.files:
        where = f"{unit.source}/{item.entry.path}"
        entry, data = item.entry, None
        if not local:
            entry, fetched = source.fetch(item.entry)
            if not isinstance(fetched, bytes):
                outcomes.append(Outcome(entry, "failed", reason=f"{where}: cannot read file: {fetched}"))
                continue
            data = fetched
        task = Task(entry, where, data, source.local_path(entry.path) if local else None, item.known_sha256,
                    item.manifest_row)
        outcomes.append(load(task, options, preprocessor))
    return {"unit": row["unit"], "outcomes": pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)}


class EncodeUnits:
    """An actor: the model loaded once; each call encodes units and writes them as shards (stage encode)."""

    def __init__(self, model: ModelSpec, expected: str, shard_dir: str, digest: str, batch_size: int) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() and model.device in ("auto", "cuda") else "cpu"
        if device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)  # Ray sets one thread per reserved CPU; use the node's
        self.encoder = model.load(device)
        if self.encoder.fingerprint.key != expected:
            raise IndexerError(f"an encoding actor loaded {model.name} with fingerprint "
                               f"{self.encoder.fingerprint.key}, the driver's is {expected}: every node must have the "
                               "same model files")
        self.shard_dir, self.digest = Path(shard_dir), digest
        self.batches = BatchEncoder(self.encoder, batch_size or self.encoder.suggest_batch_size())
        # pixels this actor encoded lately: repeated pixels (copies, the same image in several studies)
        # are encoded once, as the local engine does; bounded to RECENT_BYTES of vectors
        self.recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self.recent_size = max(1024, RECENT_BYTES // (4 * max(1, self.encoder.dim)))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        done: dict[str, list[Any]] = {"unit_id": [], "shard": [], "frames": [], "encoded": []}
        for packed_unit, packed_outcomes in zip(batch["unit"], batch["outcomes"], strict=True):
            unit: WorkUnit = pickle.loads(packed_unit)
            outcomes: list[Outcome] = pickle.loads(packed_outcomes)
            frames = [frame for outcome in outcomes for frame in outcome.frames]
            vectors, encoded = self._vectors(frames)
            path = write_shard(self.shard_dir, unit, self.digest, self.encoder.fingerprint, outcomes, vectors)
            done["unit_id"].append(unit.unit_id)
            done["shard"].append(str(path))
            done["frames"].append(len(frames))
            done["encoded"].append(encoded)
        return done

    def _vectors(self, frames: list[Any]) -> tuple[np.ndarray, int]:
        """The frames' vectors, encoding each distinct pixels not encoded lately once."""
        fresh = list({frame.pixel_sha256: frame for frame in frames if frame.pixel_sha256 not in self.recent}.values())
        for frame, vector in zip(fresh, self.batches.encode(fresh), strict=True):
            self.recent[frame.pixel_sha256] = vector
        for frame in frames:
            self.recent.move_to_end(frame.pixel_sha256)
        vectors = np.stack([self.recent[frame.pixel_sha256] for frame in frames]) if frames else np.zeros(
            (0, self.encoder.dim), dtype=np.float32)
        while len(self.recent) > self.recent_size:
            self.recent.popitem(last=False)
        return vectors, len(fresh)


# -- the driver ------------------------------------------------------------------------------------------

class RayEngine:
    def __init__(self, options: RayOptions, load: LoadOptions, db_folder: Path) -> None:
        self.options = options
        self.load = load
        self.shard_dir = options.shard_dir or db_folder / "shards"
        self._ray: ModuleType | None = None

    @property
    def ray(self) -> ModuleType:
        """The connected Ray module (after prepare())."""
        assert self._ray is not None, "call prepare() first"
        return self._ray

    def _deid_check(self) -> str | None:
        return pseudonym("key-check", self.load.deid_secret, "key") if self.load.deid_secret else None

    def recover(self, source: Source, store: Store, repository: Repository, options: JobOptions) -> int:
        """Commit the shards a killed run left, without encoding them again."""
        shards = list(leftover_shards(self.shard_dir, source.key)) if self.shard_dir.is_dir() else []
        if not shards:
            return 0
        manifest = store.manifest
        listing = Listing([], repository.archive_state(source.key))
        committed = 0
        usable = []
        for path, shard in shards:
            if shard is None:
                path.rename(path.with_suffix(".unreadable"))
                continue
            fingerprint = shard.fingerprint
            same_model = manifest is None or fingerprint["key"] == manifest.fingerprint_key
            if repository.committed_unit(shard.unit_id) or not same_model or shard.config != config_digest(
                    _fingerprint_of(fingerprint), self.load, self._deid_check() or "off"):
                path.unlink(missing_ok=True)  # committed before, or made with other settings: its files are read again
                continue
            usable.append((path, shard))
        if not usable:
            return 0
        with indexing_run(source, store, repository, usable[0][1].fingerprint, listing, self.load, given_vectors,
                          batch_size=options.batch_size or CPU_BATCH,
                          checkpoint_seconds=options.checkpoint_seconds) as run:
            for path, shard in usable:
                for outcome in shard.outcomes:
                    run.writer.add(outcome)
                committed += run.writer.flush(shard.unit_id)
                path.unlink(missing_ok=True)
        logger.info("committed %d shards a killed run had left", committed)
        return committed

    def prepare(self) -> None:
        if self._ray is not None:
            return
        if self.options.address:
            check_reachable(self.options.address)
            use_cluster_token()  # read when ray is imported
        ray = import_ray()
        if not ray.is_initialized():
            if self.options.address:
                try:
                    ray.init(address=self.options.address, logging_level="ERROR", log_to_driver=False)
                except Exception as exc:  # refused token, another Ray version: one line
                    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                    raise IndexerError(f"cannot join the Ray cluster at {self.options.address}: {first[:300]} (its "
                                       "token: RAY_AUTH_TOKEN or ~/.ray/auth_token; docs/ray.md)") from None
            else:  # a local cluster of this machine, listening on loopback only
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                         logging_level="ERROR", log_to_driver=False)
        self._ray = ray

    def run(self, source: Source, store: Store, repository: Repository, model: ModelSpec, listing: Listing,
            options: JobOptions, progress: ProgressFactory | None) -> RunResult:
        self.prepare()
        fingerprint = model.fingerprint()
        digest = config_digest(fingerprint, self.load, self._deid_check() or "off")
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        with indexing_run(source, store, repository, fingerprint.to_dict(), listing, self.load, given_vectors,
                          manifest_bytes=options.manifest_bytes, batch_size=options.batch_size or CPU_BATCH,
                          checkpoint_seconds=options.checkpoint_seconds, prune=options.prune) as run:
            units = plan_units(source.key, listing, run.manifest, digest, self.load.max_file_bytes,
                               self.options.files_per_unit)
            planned = {item.entry.path for unit in units for item in unit.files}
            bar = progress(len(listing.entries)) if progress else Progress()
            try:
                for entry in listing.entries:  # what needs no reading: unchanged, the manifest, too large
                    if entry.path not in planned:
                        outcome = task_for(source, entry, None, run, self.load, local=True)
                        assert isinstance(outcome, Outcome)
                        run.writer.add(outcome)
                        bar.advance()
                run.writer.flush()
                encoded, started = 0, time.perf_counter()
                for row in self._stream(units, model, fingerprint.key, digest, options.batch_size):
                    if not encoded:  # scheduling, the actors' model loads, the first unit's decode and encode
                        run.result.stage_seconds["first unit"] = time.perf_counter() - started
                    shard = read_shard(Path(row["shard"]))
                    for outcome in shard.outcomes:
                        run.writer.add(outcome)
                    run.writer.flush(shard.unit_id)
                    Path(row["shard"]).unlink(missing_ok=True)
                    encoded += int(row["encoded"])
                    bar.advance(len(shard.outcomes))
                    bar.note(indexed=run.result.indexed, failed=run.result.failed)
                run.result.encoded = encoded
            finally:
                bar.close()
        return run.result

    def _stream(self, units: list[WorkUnit], model: ModelSpec, expected: str, digest: str,
                batch_size: int) -> Any:
        """Finished units as the cluster delivers them: {"unit_id", "shard", "frames"} rows."""
        if not units:
            return
        ray = self._ray
        assert ray is not None
        context = ray.data.DataContext.get_current()
        context.execution_no_progress_timeout_s = self.options.stall_timeout_s
        context.enable_progress_bars = False
        # an encoder actor that Ray destroys before it is created (seen under load on a local cluster: "Failed
        # to create actor ... may be already destroyed") otherwise fails the whole run at once (Ray's default
        # is no init death at all); one replacement, so that a model that cannot load still fails fast
        context.max_consecutive_actor_init_deaths = 1
        gpus = ray.cluster_resources().get("GPU", 0) if model.device != "cpu" else 0
        encoders = self.options.encoders or max(1, int(gpus))
        decode = DecodeContext(self.load.max_file_bytes, replace(self.load, deid_secret=None), self._deid_check(),
                               model.preprocessor())
        dataset = ray.data.from_items([{"unit": pickle.dumps(unit)} for unit in units], override_num_blocks=len(units))
        dataset = dataset.map(decode_unit, fn_kwargs={"context": decode}, num_cpus=self.options.decode_cpus)
        dataset = dataset.map_batches(
            EncodeUnits, fn_constructor_kwargs={"model": model, "expected": expected, "shard_dir": str(self.shard_dir),
                                                "digest": digest, "batch_size": batch_size},
            batch_size=1, concurrency=encoders, num_cpus=self.options.encoder_cpus, num_gpus=1 if gpus else 0,
            max_restarts=-1, max_task_retries=-1)
        started = time.monotonic()
        try:
            yield from dataset.iter_rows()
        except Exception as exc:  # Ray wraps the cause; say it in one line
            cause = getattr(exc, "cause", None) or exc
            if type(exc).__name__ == "ExecutionTimeoutError":
                raise IndexerError(
                    f"the Ray cluster made no progress for {self.options.stall_timeout_s:.0f} s: a stage cannot be "
                    f"scheduled (each encoder reserves {self.options.encoder_cpus:g} CPU and {1 if gpus else 0} GPU, "
                    f"each decoding task {self.options.decode_cpus:g} CPU; the cluster has "
                    f"{ray.cluster_resources()}). What finished is kept; rerun when it has room") from exc
            if isinstance(cause, IndexerError):
                raise IndexerError(str(cause)) from exc
            raise IndexerError(f"the Ray run failed after {time.monotonic() - started:.0f} s: "
                               f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from exc

    def close(self) -> None:
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None


def _fingerprint_of(described: dict[str, Any]) -> Any:
    from core.model.encoder import ModelFingerprint

    return ModelFingerprint(**{key: value for key, value in described.items() if key != "key"})
