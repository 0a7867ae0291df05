"""Who is calling, what their role may do, and the audit record of what they did.

Roles: admin (everything, and the audit log), clinician (sees patient identifiers), researcher (an
allow-list of fields, pseudonyms for every identifier: search_api/security/redact.py). The key is checked by
the gate (search_api/security/gate.py) before any request body is read; routes read the caller from the
request. Open mode (no keys, every caller a clinician) exists only on loopback, for the demo.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from search_api.errors import status_of
from search_api.security.redact import RESEARCHER_FIELDS, Redactor
from storage.access import AccessStore

KEY_PREFIX = "msk_"
DOWNLOAD_ROLES = ("clinician", "admin")  # who may download an original file: never researchers


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str


def key_id_of(plain: str) -> str:
    """The public id part of a presented key (msk_<id>_<secret>), for the audit log; never the secret."""
    parts = plain.split("_")
    return parts[1][:16] if len(parts) >= 3 and parts[0] + "_" == KEY_PREFIX else ""


@dataclass
class AccessControl:
    """What the app enforces: a key store, or open mode (loopback demo only)."""

    store: AccessStore | None
    open_mode: bool = False
    pseudonym_secret: str = ""
    researcher_fields: Iterable[str] = RESEARCHER_FIELDS
    redactor: Redactor = field(init=False)

    def __post_init__(self) -> None:
        self.redactor = Redactor(self.pseudonym_secret or secrets.token_hex(32), self.researcher_fields)

    def authenticate(self, plain: str) -> Principal | None:
        if self.open_mode:
            return Principal("open", "clinician")
        info = self.store.authenticate(plain) if self.store is not None and plain else None
        return Principal(info.id, info.role) if info is not None else None

    def record(self, principal: Principal, action: str, kind: str | None, ids: Sequence[int],
               status: int = 200, client: str | None = None) -> None:
        if self.store is not None:
            self.store.record(principal.key_id, principal.role, action, kind, ids, status, client)


async def get_access(request: Request) -> AccessControl:
    access: AccessControl = request.app.state.access
    return access


async def caller(request: Request) -> Principal:
    """The caller the gate authenticated (it answered 401 before the route otherwise)."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"}, detail=[{
            "loc": ["header", "authorization"], "msg": "an API key is required", "type": "unauthorized"}])
    return principal


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status_code=403, detail=[{
                "loc": ["header", "authorization"], "type": "forbidden",
                "msg": f"the role {principal.role!r} may not do this (needs {' or '.join(roles)})"}])
        return principal
    return check


@dataclass
class Audit:
    """What a route did, filled in by the route and recorded by the dependency when it ends."""

    action: str
    kind: str | None = None
    ids: list[int] = field(default_factory=list)


def audited(action: str) -> Callable[..., AsyncIterator[Audit]]:
    """A dependency that records the request in the audit log when it ends: key id, role, action,
    query kind, result ids (and the image the path names) and the status it ended with (never the
    query itself). The write runs in the thread pool, the rest on the event loop."""
    async def dependency(request: Request, access: Annotated[AccessControl, Depends(get_access)],
                         principal: Annotated[Principal, Depends(caller)]) -> AsyncIterator[Audit]:
        entry = Audit(action)
        named = str(request.path_params.get("image_id", ""))
        if named.isdigit():  # the image a route is about, recorded even when the route refuses
            entry.ids.append(int(named))
        try:
            yield entry
        except Exception as exc:
            status = exc.status_code if isinstance(exc, HTTPException) else status_of(exc)
            await run_in_threadpool(access.record, principal, entry.action, entry.kind, entry.ids, status)
            raise
        await run_in_threadpool(access.record, principal, entry.action, entry.kind, entry.ids)
    return dependency


CallerDep = Annotated[Principal, Depends(caller)]
AdminDep = Annotated[Principal, Depends(require("admin"))]
AccessDep = Annotated[AccessControl, Depends(get_access)]
SearchAudit = Annotated[Audit, Depends(audited("search"))]
ViewAudit = Annotated[Audit, Depends(audited("view"))]
PreviewAudit = Annotated[Audit, Depends(audited("preview"))]
ClassifyAudit = Annotated[Audit, Depends(audited("classify"))]
DownloadAudit = Annotated[Audit, Depends(audited("download"))]
DownloaderDep = Annotated[Principal, Depends(require(*DOWNLOAD_ROLES))]
