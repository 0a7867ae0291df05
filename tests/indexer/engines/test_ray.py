"""The Ray engine on a real local Ray cluster (2 CPUs, no GPU): it ends where the local engine ends, on a
zip and on a folder of real DICOM files; an encoding actor killed after writing a shard, and the driver
killed at ten points, change nothing in the end, and finished shards are not encoded again; every Ray
listener is on loopback; a missing extra, a wrong address and a stall are one line each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from indexer.engines.units import read_shard
from indexer.sample import build_sample_archive, pydicom_test_files
from storage.opening import open_index
from tests.indexer.pipeline.test_crash_safety import assert_same_state, make_archive, sources_written
from tests.ray_cluster import RAY_ENV, RayCluster, is_loopback, listening

pytestmark = pytest.mark.timeout(900)


def index(archive: Path, db: Path, model: Path, *options: str, env: dict[str, str] | None = None,
          background: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    command = [sys.executable, "-m", "indexer.cli.main", "run", str(archive), "--db", str(db), "--model", str(model),
               "--no-progress", "--log-level", "WARNING", *options]
    environment = {**os.environ, **RAY_ENV, **(env or {})}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=environment)


def on_ray(cluster: RayCluster, *more: str) -> tuple[str, ...]:
    return ("--engine", "ray", "--ray-address", cluster.address, *more)


def everything(db: Path) -> tuple[dict, list, dict]:
    """Images by (pixels, patient, study) with their sources and metadata; every file verdict; vectors."""
    with open_index(db, read_only=True) as (store, repository):
        assert store.verify() == []
        images = repository.get_images(repository.image_ids().tolist())
        ids, vectors = repository.get_embeddings(list(images), store.dim or 0)
        by_id = dict(zip(ids.tolist(), vectors, strict=True))
        described, vectors_by_key = {}, {}
        for image_id, image in images.items():
            key = (image.pixel_sha256, image.metadata.patient_id, image.metadata.study_uid)
            described[key] = (image.kind, asdict(image.metadata),
                              sorted((s.path, s.frame_index, s.file_sha256) for s in image.sources))
            vectors_by_key[key] = by_id[image_id]
        verdicts = sorted((i.path, i.kind, i.reason) for run in repository.list_runs()
                          for i in repository.run_issues(run.id))
    return described, verdicts, vectors_by_key


def assert_same(local_db: Path, ray_db: Path) -> None:
    local, local_verdicts, local_vectors = everything(local_db)
    remote, remote_verdicts, remote_vectors = everything(ray_db)
    assert remote == local  # the same images, each with the same metadata and the same sources
    assert remote_verdicts == local_verdicts  # the same files skipped and failed, for the same reasons
    for key, vector in local_vectors.items():
        assert np.allclose(vector, remote_vectors[key], atol=1e-5)


@pytest.mark.parametrize("corpus", ["sample zip", "pydicom folder"])
def test_ray_and_local_engines_end_in_the_same_state(ray_cluster: RayCluster, tiny_model_dir: Path, tmp_path: Path,
                                                     corpus: str):
    archive = build_sample_archive(tmp_path / "sample.zip")[0] if corpus == "sample zip" else pydicom_test_files()
    local = index(archive, tmp_path / "local", tiny_model_dir)
    remote = index(archive, tmp_path / "ray", tiny_model_dir, *on_ray(ray_cluster, "--ray-unit-files", "16"))
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert_same(tmp_path / "local", tmp_path / "ray")
    assert not list((tmp_path / "ray" / "shards").glob("*.npz"))  # every shard committed, then removed
    again = index(archive, tmp_path / "ray", tiny_model_dir, *on_ray(ray_cluster))
    assert "the model was not loaded" in again.stderr  # nothing new: no cluster work at all


def actor_pids() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"EncodeUnits" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_an_encoding_actor_killed_after_writing_a_shard_changes_nothing(ray_cluster: RayCluster,
                                                                          tiny_model_dir: Path, tmp_path: Path):
    archive = make_archive(tmp_path / "archive")
    clean = index(archive, tmp_path / "clean", tiny_model_dir)
    assert clean.returncode == 0
    run = index(archive, tmp_path / "ray", tiny_model_dir, *on_ray(ray_cluster, "--ray-unit-files", "4"),
                background=True)
    shards, kills = tmp_path / "ray" / "shards", 0
    while run.poll() is None and kills < 2:
        if shards.is_dir() and any(shards.glob("*.npz")) and (pids := actor_pids()):
            for pid in pids:  # right after a rename, before the actor hands the unit back
                os.kill(pid, signal.SIGKILL)
            kills += 1
            time.sleep(1.5)
        time.sleep(0.005)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
    assert kills >= 1
    assert_same_state(tmp_path / "clean", tmp_path / "ray")  # no source twice, no image lost


def shard_files(folder: Path) -> dict[str, list[str]]:
    """unit id -> the paths of the files in that shard, for the complete shards in `folder`."""
    found = {}
    for path in folder.glob("*.npz"):
        try:
            shard = read_shard(path)
        except (OSError, ValueError):
            continue
        found[shard.unit_id] = [outcome.entry.path for outcome in shard.outcomes]
    return found


def test_the_driver_killed_at_ten_points_then_rerun_equals_a_clean_run(ray_cluster: RayCluster,
                                                                        tiny_model_dir: Path, tmp_path: Path):
    archive = make_archive(tmp_path / "archive")
    clean = index(archive, tmp_path / "clean", tiny_model_dir)
    assert clean.returncode == 0
    total = sources_written(tmp_path / "clean")
    db, options = tmp_path / "ray", on_ray(ray_cluster, "--ray-unit-files", "3")
    killed_at = []
    for i in range(12):
        target = max(round(total * (i + 1) / 13), sources_written(db) + 1)
        run = index(archive, db, tiny_model_dir, *options, background=True)
        while run.poll() is None and sources_written(db) < target:
            time.sleep(0.002)
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
            killed_at.append(sources_written(db))
        run.communicate(timeout=120)
    assert len(killed_at) >= 10, f"only {len(killed_at)} kills landed mid-run: {killed_at}"

    # what the last killed driver left: complete shards, committed by the next run without encoding them
    left = shard_files(db / "shards")
    with open_index(db, read_only=True) as (_, repository):
        known = set(repository.archive_state(str(archive)))
        unfinished = [unit for unit in left if not repository.committed_unit(unit)]  # the rest: deletion cut off
    leftover_paths = {path for paths in left.values() for path in paths}
    images = {p.name for p in archive.glob("*.dcm") if p.name != "truncated.dcm"}  # not the manifest, not notes
    expected = len(images - known - leftover_paths)  # one frame each: the files still to encode
    final = index(archive, db, tiny_model_dir, *options)
    assert final.returncode == 0, final.stderr
    if unfinished:
        assert f"committed {len(unfinished)} work units a killed run had finished" in final.stderr
    encoded = int(final.stdout.split(" new images (")[1].split(" encoded")[0])
    assert encoded == expected  # nothing a shard held was encoded again
    assert_same_state(tmp_path / "clean", db)
    with open_index(db, read_only=True) as (_, repository):
        statuses = [run.status for run in repository.list_runs()]
    assert statuses[-1] == "completed" and not list((db / "shards").glob("*.npz"))


def test_every_ray_listener_is_on_loopback(ray_cluster: RayCluster, tiny_model_dir: Path, tmp_path: Path):
    assert ray_cluster.listeners and all(is_loopback(host) for host, _ in ray_cluster.listeners)
    before, seen = listening(), set()
    run = index(pydicom_test_files(), tmp_path / "db", tiny_model_dir, "--engine", "ray", background=True)
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen.update(listening() - before)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, stderr = run.communicate(timeout=600)
    watching.set()
    watcher.join()
    assert run.returncode == 0, stderr
    assert seen, "the local cluster opened no listener (did it start?)"
    assert [address for address in seen if not is_loopback(address[0])] == []


def test_a_missing_extra_a_wrong_address_and_a_stall_are_one_line_each(ray_cluster: RayCluster,
                                                                         tiny_model_dir: Path, tmp_path: Path):
    archive = make_archive(tmp_path / "archive")
    no_ray = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ray'] = None; from indexer.cli.main import main; main()",
         "run",
         str(archive), "--db", str(tmp_path / "a"), "--model", str(tiny_model_dir), "--engine", "ray"],
        capture_output=True, text=True, timeout=300, check=False)
    assert no_ray.returncode == 2 and "Traceback" not in no_ray.stderr
    assert 'the Ray engine needs the "ray" extra: pip install -e ".[ray]"' in no_ray.stderr.splitlines()[-1]
    wrong = index(archive, tmp_path / "b", tiny_model_dir, "--engine", "ray", "--ray-address", "127.0.0.1:1")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "--ray-address 127.0.0.1:1: no Ray cluster answers there" in wrong.stderr.splitlines()[-1]
    started = time.monotonic()
    stalled = index(archive, tmp_path / "c", tiny_model_dir, *on_ray(ray_cluster, "--ray-stall-timeout", "8"),
                    env={"MEDSEARCH_RAY_ENCODER_CPUS": "3"})  # an encoder the 2-CPU cluster cannot place
    assert stalled.returncode == 2 and "Traceback" not in stalled.stderr, stalled.stderr
    assert "made no progress for 8 s" in stalled.stderr.splitlines()[-1], stalled.stderr
    assert time.monotonic() - started < 120


def test_a_unit_committed_twice_is_committed_once(tmp_path: Path):
    from storage.records import UnitRecord
    from tests.storage.test_store import fingerprint, records

    with open_index(tmp_path / "db", create=True) as (store, repository):
        store.bind_model(fingerprint())
        run_id = repository.start_run("/a", "k1")
        unit = UnitRecord("u" * 64, files=3, frames=3)
        first = store.write(records(3), run_id=run_id, unit=unit)
        again = store.write(records(3), run_id=run_id, unit=unit)  # a retried task's shard, delivered again
        assert first is not None and again is None
        assert repository.count_images() == store.ntotal == 3 and repository.committed_unit(unit.unit_id)
    assert json.dumps(asdict(unit))  # a plain record


def test_build_index_on_ray_merges_on_disk_and_the_api_serves_it(ray_cluster: RayCluster, indexed_db: Path,
                                                                 encoder, tiny_model_dir: Path, tmp_path: Path):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from search_api.app import build_service, create_app
    from search_api.security.auth import AccessControl

    db = tmp_path / "db"
    shutil.copytree(indexed_db, db, ignore=shutil.ignore_patterns(".writer.lock"))
    built = subprocess.run([sys.executable, "-m", "indexer.cli.main", "build-index", "--db", str(db), "--engine", "ray",
                            "--ray-address", ray_cluster.address, "--index", "ivf", "--ray-parts", "3"],
                           capture_output=True, text=True, timeout=600, check=False, env={**os.environ, **RAY_ENV})
    assert built.returncode == 0, built.stderr
    assert "3 shards merged on disk" in built.stdout and len(list(db.glob("index-*.ivfdata"))) == 1
    with open_index(db, read_only=True) as (store, repository):
        assert store.index_kind == "ivf" and store._index.on_disk and store.verify() == []
        ids, vectors = repository.get_embeddings(repository.embedding_ids().tolist(), encoder.dim)
    settings = Settings(db_dir=db, model=str(tiny_model_dir), device="cpu")
    service = build_service(settings, encoder=encoder)
    with TestClient(create_app(settings, service=service, access=AccessControl(None, open_mode=True)),
                    base_url="http://localhost") as client:
        for query in ("chest ct", "brain mri", "noise"):
            found = client.post("/search/text", json={"query": query, "k": 5, "mode": "image"}).json()["results"]
            exact = ids[np.argsort(-(vectors @ encoder.encode_texts([query])[0]), kind="stable")[:5]]
            assert [r["image_id"] for r in found] == exact.tolist()
    service.close()


def test_repeated_pixels_are_encoded_once_as_on_the_local_engine(ray_cluster: RayCluster, tiny_model_dir: Path,
                                                                  tmp_path: Path):
    """Copies of the same pixels (the same file under other names, in other patients' folders) across
    several work units: the Ray engine encodes each distinct pixels once, as the local engine does."""
    import shutil

    archive = tmp_path / "copies"
    for n in range(4):
        for name in ("CT_small.dcm", "MR_small.dcm"):
            (archive / f"copy{n}").mkdir(parents=True, exist_ok=True)
            shutil.copy2(pydicom_test_files() / name, archive / f"copy{n}" / name)
    local = index(archive, tmp_path / "local", tiny_model_dir)
    remote = index(archive, tmp_path / "ray", tiny_model_dir, *on_ray(ray_cluster, "--ray-unit-files", "2",
                                                                     "--ray-encoders", "1"))
    assert local.returncode == remote.returncode == 0, remote.stderr
    counts = [int(run.stdout.split(" new images (")[1].split(" encoded")[0]) for run in (local, remote)]
    assert counts == [2, 2]  # two distinct pixels, eight files in four units
    assert_same(tmp_path / "local", tmp_path / "ray")
