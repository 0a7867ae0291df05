"""Decode + render rate per DICOM transfer syntax over the real corpus (pydicom, pydicom-data, deid-data).

    .venv/bin/python bench/decode_rates.py [--repeat N]

Prints, per transfer syntax, the files, the pixels per image and images/s of core.imaging.images.load_image_frames
(the indexer's decode and render stage, middle frame), measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom

from core.errors import ImageError
from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_frames
from indexer.sample import pydicom_data_files, pydicom_test_files


def corpus() -> list[Path]:
    folders = [pydicom_test_files()]
    if (data := pydicom_data_files()) is not None:
        folders.append(data)
    try:
        import deid_data

        folders.append(Path(deid_data.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for folder in folders for p in folder.rglob("*") if p.is_file() and p.suffix != ".pyc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="decode each file this many times")
    args = parser.parse_args()
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")
    options = RenderOptions()
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # files, seconds, pixels
    for path in corpus():
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            ts = ds.file_meta.TransferSyntaxUID.name if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
        except Exception:
            continue
        try:
            load_image_frames(data, str(path), options)  # warm-up, and skip what does not decode
        except (ImageError, ValueError):
            continue
        started = time.perf_counter()
        for _ in range(args.repeat):
            images = load_image_frames(data, str(path), options)
        seconds = (time.perf_counter() - started) / args.repeat
        entry = stats[ts or "(no transfer syntax in file meta)"]
        entry[0] += 1
        entry[1] += seconds
        entry[2] += images[0].pixels.shape[0] * images[0].pixels.shape[1]
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"pydicom {pydicom.__version__}")
    print(f"{'transfer syntax':58} {'files':>5} {'Mpx/img':>8} {'images/s':>9}")
    total_files, total_seconds = 0, 0.0
    for name, (files, seconds, pixels) in sorted(stats.items(), key=lambda kv: -kv[1][0]):
        print(f"{name[:58]:58} {int(files):5d} {pixels / files / 1e6:8.2f} {files / seconds:9.1f}")
        total_files, total_seconds = total_files + int(files), total_seconds + seconds
    print(f"{'all':58} {total_files:5d} {'':8} {total_files / total_seconds:9.1f}")


if __name__ == "__main__":
    main()
