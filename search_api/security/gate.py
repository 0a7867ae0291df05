"""The ASGI gate in front of every route: what an outsider can make the server do costs nothing.

In order, before the application sees the request:
1. Host: only the names the server answers to (open mode: loopback names only), against DNS
   rebinding from a web page; 400 otherwise.
2. Key: every route but the public ones needs a valid key, checked before the body is read; a
   failure is answered 401 and recorded in the audit log (key id if any, client address, never the
   secret); a client address with too many failures in a minute is answered 429 until it waits.
3. Size: a declared Content-Length above the route's cap (uploads MEDSEARCH_MAX_UPLOAD_BYTES, every
   other body MEDSEARCH_MAX_BODY_BYTES) is refused with 413 before a byte is read; a body that
   streams past the cap without declaring it is cut off there, with the same 413.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.security.auth import AccessControl, Principal, key_id_of

PUBLIC = frozenset({"/", "/health", "/presets", "/windows", "/docs", "/openapi.json", "/redoc"})
PUBLIC_PREFIXES = ("/static/",)
UPLOAD_ROUTES = frozenset({"/search/image", "/classify", "/render"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class HostPolicy:
    """Host names the server answers to: exact names, `*.domain` suffixes, or `*` for any."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {name.strip().lower().strip("[]") for name in names if name.strip()}

    def allows(self, host_header: str) -> bool:
        if "*" in self.names:
            return True
        host = host_header.strip().lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        return host in self.names or any(n.startswith("*.") and host.endswith(n[1:]) for n in self.names)


class FailureLimiter:
    """Failed authentications per client address in a sliding window; bounded memory."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def wait_s(self, client: str) -> float:
        """Seconds this client must wait before it may try again (0: it may)."""
        now = time.monotonic()
        failures = self._recent(client, now)
        return failures[0] + self.window_s - now if len(failures) >= self.limit else 0.0

    def fail(self, client: str) -> None:
        now = time.monotonic()
        failures = self._recent(client, now)
        failures.append(now)
        self._failures[client] = failures
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


class BodyTooLargeError(Exception):
    pass


async def respond(send: Send, status: int, loc: list[str], msg: str, kind: str,
                  headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": [{"loc": loc, "msg": msg, "type": kind}]}).encode()
    all_headers = {**SECURITY_HEADERS, "content-type": "application/json", "cache-control": "no-store",
                   "content-length": str(len(body)), **(headers or {})}
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()]})
    await send({"type": "http.response.body", "body": body})


async def too_large(send: Send, cap: int, upload: bool) -> None:
    setting = "MEDSEARCH_MAX_UPLOAD_BYTES" if upload else "MEDSEARCH_MAX_BODY_BYTES"
    await respond(send, 413, ["body", "file"] if upload else ["body"],
                  f"the request body exceeds the limit of {cap} bytes ({setting})", "too_large")


def presented_key(headers: dict[str, str]) -> str:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return headers.get("x-api-key", "").strip()


class Gate:
    def __init__(self, app: ASGIApp, access: AccessControl, hosts: HostPolicy, max_upload_bytes: int,
                 max_body_bytes: int, failures: FailureLimiter | None = None) -> None:
        self.app, self.access, self.hosts = app, access, hosts
        self.max_upload_bytes, self.max_body_bytes = max_upload_bytes, max_body_bytes
        self.failures = failures or FailureLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.hosts.allows(headers.get("host", "")):
            await respond(send, 400, ["header", "host"], "this server does not answer to that host name (set "
                          "MEDSEARCH_ALLOWED_HOSTS to the names clients use)", "bad_host")
            return
        path = scope.get("path", "")
        if path not in PUBLIC and not path.startswith(PUBLIC_PREFIXES):
            principal = await self._authenticate(scope, headers, send)
            if principal is None:
                return
            scope.setdefault("state", {})["principal"] = principal
        upload = path in UPLOAD_ROUTES
        cap = self.max_upload_bytes if upload else self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await too_large(send, cap, upload)
            return
        await self._limited(scope, receive, send, cap, upload)

    async def _authenticate(self, scope: Scope, headers: dict[str, str], send: Send) -> Principal | None:
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.failures.wait_s(client)
        if wait > 0:
            await respond(send, 429, ["header", "authorization"], "too many failed authentications from this "
                          f"address: try again in {wait:.0f} s", "too_many_failures",
                          {"retry-after": str(max(1, round(wait)))})
            return None
        key = presented_key(headers)
        principal = await anyio.to_thread.run_sync(self.access.authenticate, key)
        if principal is not None:
            return principal
        self.failures.fail(client)
        failed = Principal(key_id_of(key) or "-", "-")
        await anyio.to_thread.run_sync(lambda: self.access.record(failed, "authenticate", None, [], 401, client))
        message = ("an API key is required: send 'Authorization: Bearer <key>' (or X-API-Key)" if not key
                   else "the API key is invalid or revoked")
        await respond(send, 401, ["header", "authorization"], message, "unauthorized", {"www-authenticate": "Bearer"})
        return None

    async def _limited(self, scope: Scope, receive: Receive, send: Send, cap: int, upload: bool) -> None:
        """Run the app with a receive that stops a body at `cap` bytes; then the answer is our 413,
        whatever the app made of the cut-off body."""
        state: dict[str, Any] = {"read": 0, "over": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > cap:
                    state["over"] = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            state["started"] = True
            await send(message)

        with contextlib.suppress(BodyTooLargeError):
            await self.app(scope, counting_receive, guarded_send)
        if state["over"] and not state["started"]:
            await too_large(send, cap, upload)
