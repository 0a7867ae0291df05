"""The ASGI layer that adds what every answer carries: security headers, the content security policy of
its kind of page, `Cache-Control: no-store` on JSON (answers may carry patient data), and a 503 when
the application takes longer than the request timeout to start its answer.

A plain ASGI class, not an `@app.middleware("http")` function: Starlette's BaseHTTPMiddleware runs the
route in a task of its own and copies the response through a stream, which cost about a millisecond a
request (bench/api_bench.py).
"""

from __future__ import annotations

import json
import math

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.security.gate import SECURITY_HEADERS


class Headers:
    def __init__(self, app: ASGIApp, timeout_s: float, page_policy: str, docs_policy: str,
                 docs_paths: tuple[str, ...]) -> None:
        self.app, self.timeout_s = app, timeout_s
        self.page_policy, self.docs_policy, self.docs_paths = page_policy, docs_policy, docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        timer = anyio.CancelScope(deadline=anyio.current_time() + self.timeout_s)

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                timer.deadline = math.inf  # the timeout bounds the wait for an answer, not its streaming
                message["headers"] = self._headers(scope, list(message.get("headers", [])))
            await send(message)

        with timer:
            await self.app(scope, receive, with_headers)
        if timer.cancelled_caught and not started:
            body = json.dumps({"detail": [{"loc": [], "type": "timeout",
                                           "msg": f"the request took longer than {self.timeout_s:g} s"}]}).encode()
            await with_headers({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

    def _headers(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in headers}
        content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
        added = {name.lower().encode(): value.encode() for name, value in SECURITY_HEADERS.items()}
        if content_type.startswith(b"text/html"):
            policy = self.docs_policy if scope.get("path", "") in self.docs_paths else self.page_policy
            headers = [(n, v) for n, v in headers if n.lower() != b"content-security-policy"]
            present.discard(b"content-security-policy")
            added[b"content-security-policy"] = policy.encode()
        elif content_type.startswith(b"application/json"):
            added[b"cache-control"] = b"no-store"
        return headers + [(name, value) for name, value in added.items() if name not in present]
