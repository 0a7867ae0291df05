"""Who may call the API, and what they did: API keys (stored hashed) and the audit log.

Kept in DIR/access.sqlite (or another database URL), beside the index generations, so that keys and
the audit trail survive a switch to a new generation. Its schema changes through Alembic migrations
(storage/migrations/access), applied when it is opened. Keys look like `msk_<id>_<secret>`; only the
SHA-256 of the whole key is stored (the secret is 256 random bits, so a plain hash is enough).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.errors import StorageError
from storage.migrate import ACCESS, upgrade
from storage.sql.db import database_errors, make_engine, session_factory, sqlite_url
from storage.sql.meta import utcnow

Role = Literal["admin", "clinician", "researcher"]
ROLES: tuple[Role, ...] = ("admin", "clinician", "researcher")
ACCESS_DATABASE = "access.sqlite"


class AccessBase(DeclarativeBase):
    pass


class ApiKeyRow(AccessBase):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class AuditRow(AccessBase):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    key_id: Mapped[str] = mapped_column(String(16), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))  # search, view, preview, classify
    query_kind: Mapped[str | None] = mapped_column(String(32))  # text, image, similar, composite...
    result_ids: Mapped[str] = mapped_column(Text)  # JSON list of image ids
    status: Mapped[int] = mapped_column(Integer)
    client: Mapped[str | None] = mapped_column(String(64))  # the caller's address (failed logins)


class AccessMetaRow(AccessBase):
    __tablename__ = "access_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AccessStore:
    """API keys and the audit log. Build it at the entry point and pass it in."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        upgrade(self._engine, ACCESS)
        self._sessions = session_factory(self._engine)

    @classmethod
    def open(cls, root: str | Path, database_url: str | None = None) -> AccessStore:
        root = Path(root)
        if database_url is None:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {root}: {exc.strerror or exc}") from exc
        return cls(database_url or sqlite_url(root / ACCESS_DATABASE))

    def close(self) -> None:
        self._engine.dispose()

    # -- keys -----------------------------------------------------------------------------------------
    def create_key(self, name: str, role: str) -> tuple[KeyInfo, str]:
        """A new key. The plain key is returned once and never stored."""
        if role not in ROLES:
            raise StorageError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(4)
        plain = f"msk_{key_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        with database_errors(self._engine), self._sessions() as session, session.begin():
            session.add(ApiKeyRow(id=key_id, name=name, role=role, key_sha256=_hash(plain), created_at=now))
        return KeyInfo(key_id, name, role, now, None), plain

    def list_keys(self) -> list[KeyInfo]:
        with database_errors(self._engine), self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [KeyInfo(r.id, r.name, r.role, r.created_at, r.revoked_at) for r in rows]  # type: ignore[arg-type]

    def revoke(self, key_id: str) -> bool:
        with database_errors(self._engine), self._sessions() as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = utcnow()
            return True

    def has_active_keys(self) -> bool:
        with database_errors(self._engine), self._sessions() as session:
            return session.scalar(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None)).limit(1)) is not None

    def authenticate(self, plain: str) -> KeyInfo | None:
        """The key's holder if `plain` is a valid, unrevoked key; None otherwise (in constant time
        with respect to the secret)."""
        parts = plain.split("_")
        if len(parts) < 3 or parts[0] != "msk":
            return None
        with database_errors(self._engine), self._sessions() as session:
            row = session.get(ApiKeyRow, parts[1])
            if row is None or not hmac.compare_digest(row.key_sha256, _hash(plain)) or row.revoked_at is not None:
                return None
            return KeyInfo(row.id, row.name, row.role, row.created_at, row.revoked_at)  # type: ignore[arg-type]

    def pseudonym_secret(self) -> str:
        """The key of the pseudonyms shown to researchers: made once, kept here."""
        with database_errors(self._engine), self._sessions() as session, session.begin():
            row = session.get(AccessMetaRow, "pseudonym_secret")
            if row is None:
                row = AccessMetaRow(key="pseudonym_secret", value=secrets.token_hex(32))
                session.add(row)
            return row.value

    # -- audit ----------------------------------------------------------------------------------------
    def record(self, key_id: str, role: str, action: str, query_kind: str | None, result_ids: Sequence[int],
               status: int = 200, client: str | None = None) -> None:
        with database_errors(self._engine), self._sessions() as session, session.begin():
            session.add(AuditRow(at=utcnow(), key_id=key_id, role=role, action=action, query_kind=query_kind,
                                 result_ids=json.dumps([int(i) for i in result_ids]), status=status,
                                 client=client))

    def audit(self, since: datetime | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        query = select(AuditRow).order_by(AuditRow.id)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if limit is not None:
            query = query.limit(limit)
        with database_errors(self._engine), self._sessions() as session:
            for row in session.scalars(query):
                yield {"id": row.id, "at": row.at.isoformat(), "key_id": row.key_id, "role": row.role,
                       "action": row.action, "query_kind": row.query_kind,
                       "result_ids": json.loads(row.result_ids), "status": row.status, "client": row.client}
