"""A PACS run against a folder run over the same files, and the nightly rerun, on a real Orthanc.

    .venv/bin/python -m bench.pacs_throughput --model data/random-siglip --generated 300
    .venv/bin/python -m bench.pacs_throughput --model data/random-base --generated 100

Needs Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb). The files: every
pydicom-data file Orthanc accepts, plus --generated 512 x 512 CT slices (noise on CT_small's
header, 10 per study). Figures, all measured in this run on this machine, model already loaded:
- folder run: `run_indexing` over a folder holding exactly the instances Orthanc stored;
- PACS run: the same through DICOMweb (QIDO-RS listing, WADO-RS fetch on loopback);
- fetch only: listing + fetching every instance, nothing decoded or encoded (what the PACS side costs);
- nightly rerun with nothing new: a full listing (every study's count compared), and --since last;
- a nightly run after one new study (10 instances) arrived.
Results also go to bench/results/pacs_<model>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from bench.common import write_result
from core.model.encoder import HFEncoder
from core.settings import Settings
from core.sources import open_source
from core.sources.dicomweb import DicomWebArchive
from core.sources.dicomweb_locations import DicomWebConfig
from indexer.engines.runner import run_indexing
from indexer.pipeline.load import LoadOptions, LoadPool
from indexer.pipeline.pacs import apply_since, write_mark
from indexer.sample import pydicom_data_files, pydicom_test_files
from storage.opening import open_index
from tests.pacs import PASSWORD, USER, Orthanc, orthanc_missing


def ct_slices(count: int, first_study: int, day: date) -> list[bytes]:
    template = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    rng = np.random.default_rng(first_study)
    out = []
    for i in range(count):
        study = first_study + i // 10
        ds = template.copy()
        ds.Rows = ds.Columns = 512
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"bench-study-{study}"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"bench-series-{study}"])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"bench-sop-{study}-{i}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = day.strftime("%Y%m%d")
        ds.PatientID = f"BENCH{study}"
        ds.InstanceNumber = i % 10 + 1
        ds.PixelData = rng.integers(-1000, 2000, (512, 512), dtype=np.int16).tobytes()
        buffer = pydicom.filebase.DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local model folder (medsearch-index random-model)")
    parser.add_argument("--generated", type=int, default=300, help="generated 512 x 512 CT slices to add")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    missing = orthanc_missing()
    if missing:
        raise SystemExit(f"cannot run: {missing}")
    settings = Settings(model=args.model)
    encoder = HFEncoder.load(args.model, device="cpu")
    options = LoadOptions(render=settings.render_options())
    workers = settings.worker_count
    config = DicomWebConfig(username=USER, password=PASSWORD)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        orthanc = Orthanc(root / "orthanc")
        try:
            folder = root / "folder"
            folder.mkdir()
            data_dir = pydicom_data_files()
            files = sorted(data_dir.glob("*.dcm")) if data_dir else []
            stored = 0
            for path in files:
                try:
                    if orthanc.upload(path)["Status"] == "Success":
                        (folder / path.name).write_bytes(path.read_bytes())
                        stored += 1
                except Exception:  # Orthanc refuses a few broken files
                    pass
            for i, data in enumerate(ct_slices(args.generated, 0, date(2023, 1, 1))):
                orthanc.upload(data)
                (folder / f"ct{i:05d}.dcm").write_bytes(data)
            instances = stored + args.generated
            megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            print(f"{instances} instances ({stored} pydicom-data files Orthanc stored + {args.generated} "
                  f"generated 512x512 CT slices), {megabytes:.1f} MB; model {args.model}; {workers} decode workers")

            pool = LoadPool(workers, options, encoder.preprocessor_spec, local=encoder.preprocess)

            def run(archive, db: Path):  # type: ignore[no-untyped-def]
                with open_index(db, create=True) as (store, repository):
                    return run_indexing(archive, store, repository, encoder, batch_size=args.batch_size,
                                        options=options,
                                        pool=pool)

            warm = root / "warm"  # the decoding workers started, as the CLI has them while the model loads
            warm.mkdir()
            for path in sorted(folder.iterdir())[:4]:
                (warm / path.name).write_bytes(path.read_bytes())
            run(open_source(warm), root / "warm-db")

            folder_run = run(open_source(folder), root / "folder-db")
            url = "dicomweb+" + orthanc.dicomweb
            pacs_run = run(DicomWebArchive(url, config), root / "pacs-db")

            t0 = time.perf_counter()
            fetch = DicomWebArchive(url, config)
            fetched = sum(1 for _, data in fetch.iter_read() if isinstance(data, bytes))
            fetch_seconds = time.perf_counter() - t0

            with open_index(root / "pacs-db") as (_, repository):
                write_mark(repository, url, date.today())
            rerun_full = run(DicomWebArchive(url, config), root / "pacs-db")
            since = DicomWebArchive(url, config)
            with open_index(root / "pacs-db") as (_, repository):
                apply_since(since, repository, "last", 1)
            rerun_since = run(since, root / "pacs-db")
            for data in ct_slices(10, 10_000, date.today()):
                orthanc.upload(data)
            nightly = DicomWebArchive(url, config)
            with open_index(root / "pacs-db") as (_store, repository):
                apply_since(nightly, repository, "last", 1)
            nightly_run = run(nightly, root / "pacs-db")
            pool.close()

            # what cron sees: the whole command (process start, listing; the model loads only if something is new)
            env = {**os.environ, "MEDSEARCH_DICOMWEB_USERNAME": USER, "MEDSEARCH_DICOMWEB_PASSWORD": PASSWORD}
            command = [sys.executable, "-m", "indexer.cli.main", "run", url, "--since", "last", "--db",
                       str(root / "pacs-db"), "--model", args.model, "--no-progress", "--log-level", "WARNING"]
            t0 = time.perf_counter()
            cron = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            cron_seconds = time.perf_counter() - t0
            if cron.returncode != 0:
                raise SystemExit(f"the nightly command failed: {cron.stderr}")
        finally:
            orthanc.stop()

    def rate(result) -> float:  # type: ignore[no-untyped-def]
        files_done = result.indexed + result.linked + result.skipped + result.failed
        return files_done / result.seconds if result.seconds else 0.0

    figures = {
        "instances": instances, "megabytes": round(megabytes, 1), "model": args.model, "workers": workers,
        "folder_run": {"seconds": round(folder_run.seconds, 2), "files_per_s": round(rate(folder_run), 1),
                       "indexed": folder_run.indexed},
        "pacs_run": {"seconds": round(pacs_run.seconds, 2), "instances_per_s": round(rate(pacs_run), 1),
                     "indexed": pacs_run.indexed},
        "pacs_over_folder": round(rate(pacs_run) / rate(folder_run), 3),
        "fetch_only": {"instances": fetched, "seconds": round(fetch_seconds, 2),
                       "instances_per_s": round(fetched / fetch_seconds, 1)},
        "nightly_nothing_new_full_listing_s": round(rerun_full.seconds, 3),
        "nightly_nothing_new_since_last_s": round(rerun_since.seconds, 3),
        "nightly_one_new_study": {"seconds": round(nightly_run.seconds, 3), "indexed": nightly_run.indexed},
        "nightly_command_nothing_new_wall_s": round(cron_seconds, 2),
    }
    print(f"folder run: {folder_run.seconds:.1f} s, {rate(folder_run):.1f} files/s "
          f"({folder_run.indexed} images indexed)")
    print(f"PACS run:   {pacs_run.seconds:.1f} s, {rate(pacs_run):.1f} instances/s "
          f"({pacs_run.indexed} images indexed); PACS / folder = {figures['pacs_over_folder']:.3f}")
    print(f"fetch only (QIDO-RS + WADO-RS, nothing decoded): {fetched} instances in {fetch_seconds:.1f} s, "
          f"{fetched / fetch_seconds:.1f} instances/s")
    print(f"nightly rerun, nothing new: full listing {rerun_full.seconds:.3f} s, --since last "
          f"{rerun_since.seconds:.3f} s")
    print(f"nightly run after one new 10-instance study: {nightly_run.seconds:.3f} s, "
          f"{nightly_run.indexed} indexed")
    print(f"the nightly command (medsearch-index run ... --since last), nothing new, wall clock: "
          f"{cron_seconds:.1f} s (process start and one QIDO-RS listing; no model load when nothing is new)")
    print(f"-> {write_result('pacs_' + Path(args.model).name, figures)}")


if __name__ == "__main__":
    main()
