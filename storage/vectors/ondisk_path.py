"""An on-disk IVF index names its lists' file (storage.vectors.ondisk) by the absolute path it was merged at.
`relocated` rewrites that name, in the serialised index, to the file of the same name beside the index
file being read, so that a database folder copied to another server, moved, or restored from a backup
opens as it is and searches its own lists (never the original folder's, should that still exist)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

_NAME = re.compile(rb"index-[0-9a-f]{12}\.ivfdata")


def relocated(data: bytes, folder: Path) -> bytes:
    """`data` (a FAISS serialised index) with its on-disk lists' file name pointing into `folder`;
    unchanged for other indexes. FAISS writes the name as a little-endian uint64 length and the bytes."""
    if b"ilod" not in data:
        return data
    for found in _NAME.finditer(data):
        end = found.end()
        for start in range(found.start(), max(8, found.start() - 4096), -1):
            (length,) = struct.unpack_from("<Q", data, start - 8)
            if length == end - start and data.rfind(b"ilod", 0, start) >= 0:
                new = str(folder / found.group().decode()).encode()
                return data[:start - 8] + struct.pack("<Q", len(new)) + new + data[end:]
    return data
