"""Sources of images, one module per kind: a folder, a .zip, a .tar(.gz), a PACS over DICOMweb.

`open_source(location, options)` asks every kind, in order of priority, whether the location is
its own: a new kind (an object store, say) is one new module in this package that defines `KIND`
(a core.sources.base.SourceKind), found here without being named anywhere else. dicomweb_locations.py
is the PACS kind's half that needs no connection (locations, study queries, instance paths and viewer
links), which the API uses alone.

Inside core: may import core.errors; never core.imaging, core.model, core.maps, core.reports or core.settings.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from core.errors import ArchiveError
from core.sources.base import MAX_MEMBER_BYTES, Entry, ReadItem, Source, SourceKind, SourceOptions

__all__ = ["MAX_MEMBER_BYTES", "Entry", "ReadItem", "Source", "SourceKind", "SourceOptions", "kinds", "open_source"]


@cache
def kinds() -> tuple[SourceKind, ...]:
    """Every module of this package that defines KIND, most specific first."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "KIND", None)
        if isinstance(kind, SourceKind):
            found.append(kind)
    return tuple(sorted(found, key=lambda kind: (kind.priority, kind.name)))


def open_source(location: str | Path, options: SourceOptions | None = None) -> Source:
    """The source at `location`: a folder, zip or tar path, or a dicomweb+http(s):// PACS. Raises
    ArchiveError naming the location when it is missing or of no known kind."""
    text = str(location)
    options = options or SourceOptions()
    for kind in kinds():
        if kind.matches(text):
            return kind.open(text, options)
    if not Path(text).expanduser().exists():
        raise ArchiveError(f"{location}: no such file or folder")
    raise ArchiveError(f"{location}: not a folder, .zip or .tar(.gz) archive, nor a dicomweb+http(s):// location")
