from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from core.sources import open_source
from indexer.errors import ArchiveError, ManifestError
from indexer.pipeline.manifest import parse_manifest


def make_tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x.dcm").write_bytes(b"x")
    (root / "a" / "b" / "y.png").write_bytes(b"yy")
    (root / "top.jpg").write_bytes(b"zzz")
    return root


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "tar.gz"])
def test_every_archive_kind_lists_the_same_files(tmp_path: Path, kind: str):
    tree = make_tree(tmp_path / "tree")
    if kind == "folder":
        target = tree
    elif kind == "zip":
        target = tmp_path / "t.zip"
        with zipfile.ZipFile(target, "w") as z:
            for p in sorted(tree.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(tree).as_posix())
    else:
        target = tmp_path / f"t.{kind}"
        with tarfile.open(target, "w:gz" if kind.endswith("gz") else "w") as t:
            t.add(tree, arcname=".")
    archive = open_source(target)
    read = {entry.path: data for entry, data in archive.iter_read()}
    assert read == {"a/x.dcm": b"x", "a/b/y.png": b"yy", "top.jpg": b"zzz"}
    assert sorted(e.path for e in archive.entries()) == sorted(read)
    assert archive.read("a/b/y.png") == b"yy"


def test_symlink_loops_are_not_followed_and_dangling_links_reported(tmp_path: Path):
    tree = make_tree(tmp_path / "tree")
    os.symlink(tree, tree / "a" / "loop")
    os.symlink(tree / "missing.dcm", tree / "dangling.dcm")
    archive = open_source(tree)
    results = dict(archive.iter_read())
    paths = {entry.path for entry in results}
    assert "dangling.dcm" in paths and not any("loop" in p for p in paths)
    dangling = next(v for e, v in results.items() if e.path == "dangling.dcm")
    assert isinstance(dangling, OSError)


def test_bad_archives(tmp_path: Path):
    with pytest.raises(ArchiveError, match="no such file"):
        open_source(tmp_path / "missing.zip")
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="fake.zip"):
        open_source(tmp_path / "fake.zip")


def test_manifest_parsing():
    rows = parse_manifest(
        b"path,patient_id,labels,report,patient_age,study_date,scanner\n"
        b"./img/a.png,P1,effusion; nodule|mass,Left effusion.,63,2024-05-01,X1\n"
        b"img/b.jpg,P2,,,,,\n", "m.csv")
    a = rows["img/a.png"]
    assert a.values["patient_id"] == "P1" and a.values["patient_age"] == 63.0
    assert a.labels == ["effusion", "nodule", "mass"] and a.report_text == "Left effusion."
    assert a.extra == {"scanner": "X1"} and str(a.values["study_date"]) == "2024-05-01"
    assert rows["img/b.jpg"].labels == []


@pytest.mark.parametrize(("content", "message"), [
    (b"file_name,patient_id\nx.png,P\n", "no 'path' column"),
    (b"path,patient_age\nx.png,old\n", "line 2: patient_age"),
    (b"path,study_date\nx.png,01/02/2020\n", "line 2: study_date"),
    (b"path\nx.png\nx.png\n", "line 3: x.png is listed twice"),
    (b"", "empty file"),
])
def test_bad_manifest_names_file_and_line(content: bytes, message: str):
    with pytest.raises(ManifestError, match=f"m.csv.*{message}"):
        parse_manifest(content, "m.csv")
