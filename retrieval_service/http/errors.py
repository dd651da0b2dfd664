"""Every failure answered as JSON ``{"error": "...", "detail": [...]?}`` with its status.

    install_error_handlers(app)

A ``ReactError`` (``ServiceError`` carries its status; plain ones are 400), a
request the schema refuses (422; malformed JSON 400), Starlette's own HTTP
errors (404, 405 with the full ``Allow`` list, 413 from the guard) and any bug
(500, logged with its traceback).
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from react.errors import ReactError

log = logging.getLogger("react.serve")


def error_response(status: int, message: str, detail=None, headers: Optional[dict] = None) -> JSONResponse:
    body = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def _flat_routes(routes: list) -> Iterator:
    """``routes`` with every included router (FastAPI keeps ``include_router``'s as one entry holding its
    ``original_router``; the app includes its routes without a prefix) replaced by its own routes."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat_routes(included.routes)
        else:
            yield route


def allowed_methods(app: FastAPI, path: str) -> str:
    """The Allow header of a 405: every method some route serves at ``path`` (Starlette's own names
    only the first matching route's)."""
    methods: set[str] = set()
    for route in _flat_routes(app.router.routes):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


def validation_message(exc: RequestValidationError) -> tuple[int, str, list]:
    """(status, one-line message naming the field, pydantic's errors) for a refused request."""
    errors = exc.errors()
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body", detail
    # A union (templates: a set name or a list) reports every branch: name the branch whose type matched.
    informative = [e for e in errors
                   if not str(e.get("type", "")).endswith("_type") and e.get("type") != "literal_error"]
    first = (informative or errors or [{}])[0]
    # pydantic names union branches in the location ("list[str]", "literal['a','b']"): not a field
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and not (isinstance(p, str) and "[" in p))
    where = where or "body"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")  # a model validator's own message
    return 422, f"{where}: {msg}", detail


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ReactError)
    async def react_error(request: Request, exc: ReactError):
        return error_response(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        status, message, detail = validation_message(exc)
        return error_response(status, message, detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(app, request.url.path)
        return error_response(exc.status_code, str(exc.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # a bug: logged with its traceback, answered as JSON
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {exc.__class__.__name__}")
