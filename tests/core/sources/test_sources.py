"""Sources are one place: each kind is a module of core.sources with a KIND, found without being named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import core.sources
from core.errors import ArchiveError
from core.sources import kinds, open_source


def test_the_shipped_kinds_are_found_most_specific_first():
    assert [kind.name for kind in kinds()] == ["dicomweb", "zip", "tar", "folder"]


def test_a_new_kind_is_one_module_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "plugin"
    package.mkdir()
    (package / "objectstore.py").write_text('''
from core.sources.base import Entry, SourceKind


class Bucket:
    def __init__(self, location, options):
        self.key = location

    def entries(self, known=None):
        return [Entry("a.dcm", 3, 1.0)]

    def read(self, path):
        return b"abc"

    def iter_read(self, wanted=None):
        return iter([(self.entries()[0], b"abc")])

    def local_path(self, path):
        return None


KIND = SourceKind("objectstore", lambda location: location.startswith("s3://"), Bucket, priority=20)
''')
    monkeypatch.setattr(core.sources, "__path__", [*core.sources.__path__, str(package)])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "core.sources.objectstore", None)
    del sys.modules["core.sources.objectstore"]
    kinds.cache_clear()
    try:
        source = open_source("s3://bucket/archive")
        assert source.key == "s3://bucket/archive" and [e.path for e in source.entries()] == ["a.dcm"]
    finally:
        kinds.cache_clear()
        sys.modules.pop("core.sources.objectstore", None)


def test_an_unknown_location_names_itself(tmp_path: Path):
    with pytest.raises(ArchiveError, match="missing.zip: no such file or folder"):
        open_source(tmp_path / "missing.zip")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ArchiveError, match="not a folder, .zip or .tar"):
        open_source(tmp_path / "notes.txt")
