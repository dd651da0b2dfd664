"""Errors the service answers with: every failure is JSON ``{"error": "..."}`` with a 4xx
status when the request was at fault; a 5xx only when the service itself was."""
from __future__ import annotations

from react.errors import ReactError


class ServiceError(ReactError):
    """A ReactError with the HTTP status to answer it with (plain ReactError: 400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def not_found(what: str) -> ServiceError:
    return ServiceError(what, 404)
