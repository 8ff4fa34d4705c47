"""The one shape of every error ``cnncli serve`` answers: JSON ``{"error": "one sentence"}`` with its status,
whether the app answers (:class:`ServiceError`) or the HTTP protocol layer does before any app runs
(:func:`error_body`, used by :mod:`cnncli.serve.protocol`)."""

from __future__ import annotations

import json

RETRY_AFTER_S = 1


class ServiceError(Exception):
    """A request that gets a JSON error answer instead of results."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def busy(what: str) -> ServiceError:
    """503 with Retry-After: the service is at one of its capacity limits (``what``)."""
    return ServiceError(503, f"the service is at capacity ({what}); retry in {RETRY_AFTER_S} s.",
                        {"Retry-After": str(RETRY_AFTER_S)})


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
