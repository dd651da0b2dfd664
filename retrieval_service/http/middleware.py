"""The ASGI middleware in front of every route.

- :class:`Guard`: API keys, body size, request metrics.
- :class:`Announce`: tells the query batchers a single query is on its way.

(The compat and browse modules add their own: ``JsonBodies``, ``PublicPage``.)
Pure ASGI (not ``BaseHTTPMiddleware``), so streamed downloads pass through
untouched and a body over the limit is refused while it arrives -- with or
without a Content-Length -- instead of after it has been buffered."""
from __future__ import annotations

import hmac
import json
import time

from starlette.exceptions import HTTPException

from retrieval_service.batcher import Batchers
from retrieval_service.metrics import Metrics

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # health is never behind a key
BATCHED_PATHS = frozenset({"/v1/search", "/knn-service"})  # JSON single-query endpoints (not uploads)


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing passes it through as the 413 it is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    def __init__(self, app, api_keys: frozenset[str], max_body: int, metrics: Metrics) -> None:
        self.app, self.api_keys, self.max_body, self.metrics = app, api_keys, max_body, metrics

    def _authorized(self, scope) -> bool:
        if not self.api_keys or scope["path"] in OPEN_PATHS:
            return True
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"").decode("latin-1")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        # Compare against every key in constant time: no early exit that leaks which prefix matched.
        return any([hmac.compare_digest(given.encode(), k.encode()) for k in self.api_keys]) if given else False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status: dict = {"code": None}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if not self._authorized(scope):
                await _send_json(send_wrapper, 401, {"error": "missing or invalid API key"},
                                 [(b"www-authenticate", b"Bearer")])
                return
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _send_json(send_wrapper, 413, {"error": f"request body over {self.max_body} bytes"})
                return
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise BodyTooLarge(self.max_body)
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except BodyTooLarge:
                if status["code"] is not None:  # the response already started: nothing more can be sent
                    raise
                await _send_json(send_wrapper, 413, {"error": f"request body over {self.max_body} bytes"})
        finally:
            route = scope.get("route")
            code = status["code"] or 500
            endpoint = getattr(route, "path", None) or ("unmatched" if code == 404 else "other")
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(code)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class Announce:
    """POSTs to the single-query endpoints announce themselves to the batchers when they enter the
    service, before their body is read, so a worker about to run a batch waits (at most
    ``batch_wait_ms``) for requests already on their way (``retrieval_service.batched``)."""

    def __init__(self, app, batchers: Batchers) -> None:
        self.app, self.batchers = app, batchers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in BATCHED_PATHS:
            return await self.app(scope, receive, send)
        with self.batchers.expect():
            await self.app(scope, receive, send)
