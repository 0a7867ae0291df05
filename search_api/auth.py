"""Authentication, roles, redaction and audit for the API.

Roles: admin (everything, and the audit log), clinician (sees patient identifiers), researcher
(patient IDs and accession numbers replaced by keyed pseudonyms; reports and identifying extra
columns removed). No key: 401; a role without the right: 403. Open mode (no keys, every caller a
clinician) exists only on loopback, for the demo.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from core.deid import IDENTIFYING_COLUMN, pseudonym
from storage.access import AccessStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str


@dataclass
class AccessControl:
    """What the app enforces: a key store, or open mode (loopback demo only)."""

    store: AccessStore | None
    open_mode: bool = False
    pseudonym_secret: str = ""

    def record(self, principal: Principal, action: str, kind: str | None, ids: Sequence[int],
               status: int = 200) -> None:
        if self.store is not None:
            self.store.record(principal.key_id, principal.role, action, kind, ids, status)

    def redact(self, principal: Principal, row: dict[str, Any]) -> dict[str, Any]:
        """The row as this caller may see it."""
        if principal.role != "researcher":
            return row
        shown = copy.deepcopy(row)
        secret = self.pseudonym_secret
        shown["patient_id"] = pseudonym(row.get("patient_id"), secret, "patient")
        shown["accession_number"] = pseudonym(row.get("accession_number"), secret, "accession")
        shown["report_text"] = None
        shown["extra"] = {k: v for k, v in (row.get("extra") or {}).items() if not IDENTIFYING_COLUMN.search(k)}
        for source in shown.get("sources", []):
            source["patient_id"] = pseudonym(source.get("patient_id"), secret, "patient")
            source["accession_number"] = pseudonym(source.get("accession_number"), secret, "accession")
            source.pop("url", None)  # a link into the PACS leads to the patient's record
            source.pop("viewer_url", None)
        return shown


def unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                         detail=[{"loc": ["header", "authorization"], "msg": message, "type": "unauthorized"}])


def authenticate(request: Request) -> Principal:
    access: AccessControl = request.app.state.access
    if access.open_mode:
        return Principal("open", "clinician")
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not key:
        raise unauthorized("an API key is required: send 'Authorization: Bearer <key>' (or X-API-Key)")
    assert access.store is not None
    info = access.store.authenticate(key)
    if info is None:
        raise unauthorized("the API key is invalid or revoked")
    return Principal(info.id, info.role)


def require(*roles: str) -> Callable[..., Principal]:
    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status_code=403, detail=[{
                "loc": ["header", "authorization"], "type": "forbidden",
                "msg": f"the role {principal.role!r} may not do this (needs {' or '.join(roles)})"}])
        return principal
    return check


def get_access(request: Request) -> AccessControl:
    access: AccessControl = request.app.state.access
    return access


CallerDep = Annotated[Principal, Depends(authenticate)]
AdminDep = Annotated[Principal, Depends(require("admin"))]
AccessDep = Annotated[AccessControl, Depends(get_access)]
