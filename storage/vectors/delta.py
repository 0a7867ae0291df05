"""The index file's log of changes: checkpoints that cost what was added, not the index's size.

`index.faiss` (the base) is saved whole now and then; between saves each checkpoint appends the vectors
added and the ids removed since the previous one to `index.faiss.delta`, fsynced. Loading reads the base
and replays its log; a reader that loaded the base applies only the records appended since.

The log names the base it follows (a token in both headers) and the database it belongs to; a log of
another base (left by a crash between a new base's rename and the old log's removal) is ignored. Each
record carries its length and a CRC32, so a record torn by a crash ends the log there. Nothing is
lost either way: the embeddings table is the source of truth and Store.reconcile catches up from it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import StorageError
from storage.layout import write_atomically

logger = logging.getLogger(__name__)

MAGIC = b"MEDDLTA\x01"  # then a 4-byte header length and the JSON header {database_id, token, dim}
_FRAME = struct.Struct("<QI")  # payload length, CRC32 of the payload
_ADD, _REMOVE = b"A", b"R"


@dataclass
class Change:
    ids: np.ndarray  # int64
    vectors: np.ndarray | None  # (n, dim) float32 for added vectors; None for removed ids


def delta_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".delta")


def start_log(path: Path, owner: str, token: str, dim: int) -> int:
    """A new, empty log following the base `token`. Returns its length (where records start)."""
    header = json.dumps({"database_id": owner, "token": token, "dim": dim}).encode()
    data = MAGIC + struct.pack("<I", len(header)) + header
    write_atomically(path, data)
    return len(data)


def append(path: Path, changes: list[Change]) -> int:
    """Append records (fsynced). Returns the log's new length."""
    payload = bytearray()
    for change in changes:
        ids = np.ascontiguousarray(change.ids, dtype=np.int64)
        if change.vectors is None:
            body = _REMOVE + struct.pack("<Q", len(ids)) + ids.tobytes()
        else:
            vectors = np.ascontiguousarray(change.vectors, dtype=np.float32)
            body = _ADD + struct.pack("<QI", len(ids), vectors.shape[1]) + ids.tobytes() + vectors.tobytes()
        payload += _FRAME.pack(len(body), zlib.crc32(body)) + body
    try:
        with path.open("ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
            return handle.tell()
    except OSError as exc:
        raise StorageError(f"cannot append to {path}: {exc.strerror or exc}") from exc


def read(path: Path, owner: str, token: str | None, offset: int = 0) -> tuple[list[Change], int] | None:
    """The changes from `offset` (0: from the first record) and the offset after the last whole one;
    None when there is no log, or it follows another base or database."""
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read %s (%s): catching up from the database instead", path, exc)
        return None
    try:
        if not data.startswith(MAGIC):
            raise ValueError("not a medsearch index log")
        (length,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4 + length
        header = json.loads(data[len(MAGIC) + 4:start])
    except (ValueError, struct.error) as exc:
        logger.warning("%s is unreadable (%s): catching up from the database instead", path, exc)
        return None
    if token is None or header.get("token") != token or header.get("database_id") != owner:
        return None
    changes = list(_records(data, max(offset, start), int(header["dim"])))
    end = changes[-1][1] if changes else max(offset, start)
    return [change for change, _ in changes], end


def _records(data: bytes, offset: int, dim: int) -> Iterator[tuple[Change, int]]:
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        body = data[offset + _FRAME.size:offset + _FRAME.size + length]
        if len(body) != length or zlib.crc32(body) != crc:
            return  # torn by a crash: the rest is caught up from the database
        offset += _FRAME.size + length
        if body[:1] == _REMOVE:
            (count,) = struct.unpack_from("<Q", body, 1)
            yield Change(np.frombuffer(body, np.int64, count, 9).copy(), None), offset
        else:
            count, width = struct.unpack_from("<QI", body, 1)
            if width != dim:
                return
            ids = np.frombuffer(body, np.int64, count, 13).copy()
            vectors = np.frombuffer(body, np.float32, count * width, 13 + 8 * count).reshape(count, width).copy()
            yield Change(ids, vectors), offset


LOG_MIN = 50_000  # vectors the log may hold before the index is saved whole, however small the index


class IndexLog:
    """One store's view of its index's log: the base it follows, how far it has applied or written the
    log, and the changes since its last checkpoint."""

    def __init__(self, index_path: Path, owner: str) -> None:
        self.path, self.owner = delta_path(index_path), owner
        self.token: str | None = None  # the saved base's; None: the next checkpoint saves the index whole
        self.end = 0  # the log's length applied or written
        self.logged = 0  # vectors in the log
        self.base_total = 0  # vectors in the saved base
        self.changes: list[Change] = []  # since the last checkpoint
        self.caught_up: set[int] = set()  # a reader: ids it added from the database, not (yet) from the log

    def follow(self, token: str | None, base_total: int) -> None:
        """A base was loaded (or saved): its log starts empty from here."""
        self.token, self.base_total, self.logged, self.end = token, base_total, 0, 0
        self.caught_up, self.changes = set(), []

    def forget(self) -> None:
        """The next checkpoint saves the index whole (after a rebuild, a removal, a catch-up)."""
        self.token, self.changes = None, []

    def grown(self) -> bool:
        try:
            return self.token is not None and self.path.stat().st_size > self.end
        except OSError:
            return False

    def replay(self, index: Any, offset: int = 0) -> int:
        """Apply the records from `offset` to `index`; how many there were."""
        found = read(self.path, self.owner, self.token, offset)
        if found is None:
            return 0
        changes, self.end = found
        for change in changes:
            if change.vectors is None:
                if index.can_remove:
                    index.remove(change.ids)
                else:
                    self.token = None  # left to reconcile (which rebuilds an index that cannot remove)
                continue
            ids, vectors = change.ids, change.vectors
            if self.caught_up:
                new = ~np.isin(ids, np.fromiter(self.caught_up, dtype=np.int64))
                self.caught_up.difference_update(ids.tolist())
                ids, vectors = ids[new], vectors[new]
            index.add(ids, vectors)
            self.logged += len(change.ids)
        return len(changes)

    def save(self, index: Any, save_whole: Callable[[str], None]) -> None:
        """Append the changes, or (no base to follow, or the log at half the base) save the index whole
        through `save_whole(token)` and start a new log."""
        adding = sum(len(change.ids) for change in self.changes if change.vectors is not None)
        if self.token is not None and self.logged + adding <= max(LOG_MIN, self.base_total // 2):
            self.end = append(self.path, self.changes)
            self.logged += adding
            self.changes = []
            return
        token = uuid.uuid4().hex
        save_whole(token)
        self.follow(token, index.ntotal)
        self.end = start_log(self.path, self.owner, token, index.dim)
