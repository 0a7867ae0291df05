"""The model manifest and facts about the database itself (part of storage.sql.repository.Repository)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import FingerprintMismatchError, StorageError
from storage.records import Manifest
from storage.sql.db import database_errors
from storage.sql.models import IndexManifestRow, Meta


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class MetaMixin:
    engine: Engine
    _sessions: sessionmaker[Session]

    def get_manifest(self) -> Manifest | None:
        with database_errors(self.engine), self._sessions() as session:
            row = session.get(IndexManifestRow, 1)
            if row is None:
                return None
            return Manifest(fingerprint_key=row.fingerprint_key, model_name=row.model_name,
                            model_revision=row.model_revision, weights_sha256=row.weights_sha256, dim=row.dim,
                            metric=row.metric, preprocessing_version=row.preprocessing_version,
                            random_weights=bool(row.random_weights), created_at=row.created_at)

    def ensure_manifest(self, fingerprint: dict[str, Any], metric: str = "ip") -> Manifest:
        """Record the model of a new index, or check that `fingerprint` is the one recorded."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            row = session.get(IndexManifestRow, 1)
            if row is None:
                session.add(IndexManifestRow(
                    id=1, fingerprint_key=fingerprint["key"], model_name=fingerprint["name"],
                    model_revision=fingerprint.get("revision"), weights_sha256=fingerprint.get("weights_sha256"),
                    dim=int(fingerprint["dim"]), metric=metric,
                    preprocessing_version=str(fingerprint["preprocessing_version"]),
                    random_weights=bool(fingerprint.get("random_weights", False)), created_at=utcnow()))
            elif row.fingerprint_key != fingerprint["key"]:
                raise FingerprintMismatchError(
                    f"this index was built with model {row.model_name!r} (fingerprint {row.fingerprint_key}, "
                    f"{row.dim}-d, preprocessing v{row.preprocessing_version}); the model now in use is "
                    f"{fingerprint['name']!r} (fingerprint {fingerprint['key']}, {fingerprint['dim']}-d, "
                    f"preprocessing v{fingerprint['preprocessing_version']}). Vectors of different models "
                    "cannot be mixed: use the same model, or build a new index generation (--new-generation).")
        manifest = self.get_manifest()
        assert manifest is not None
        return manifest

    def get_meta(self, key: str) -> str | None:
        with database_errors(self.engine), self._sessions() as session:
            row = session.get(Meta, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or, with None, delete) a fact about the database."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            if value is None:
                session.execute(delete(Meta).where(Meta.key == key))
            else:
                session.merge(Meta(key=key, value=value))

    def ensure_meta(self, key: str, value: str, explain: str) -> None:
        """Record `value` under `key` the first time; afterwards refuse a different one (StorageError)."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            row = session.get(Meta, key)
            if row is None:
                session.add(Meta(key=key, value=value))
            elif row.value != value:
                raise StorageError(f"{explain} (recorded {key}={row.value}, asked {key}={value})")

    def secret(self, key: str) -> str:
        """A random value made once and kept in the database (identities, keys of hashes)."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            row = session.get(Meta, key)
            if row is None:
                row = Meta(key=key, value=uuid.uuid4().hex + uuid.uuid4().hex)
                session.add(row)
            return row.value
