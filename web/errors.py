"""RFC 9457 problem details for every error the API answers, router 404/405 included."""

from __future__ import annotations

import logging
import re
from typing import Any

import falcon
import msgspec

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
PROBLEM_BASE = "https://quiz.example/problems/"


class Problem(falcon.HTTPError):
    """An HTTP error with a problem type slug and optional per-field errors."""

    def __init__(
        self,
        status: str,
        kind: str,
        title: str,
        detail: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, title=title, description=detail, headers=headers)
        self.kind = kind
        self.errors = errors
        self.extra = extra or {}


# Every slug the API creates matches this; anything else is an unknown competition, answered
# before it reaches PostgreSQL (which refuses NUL and need not look up a megabyte of path).
SLUG = re.compile(r"[a-z0-9][a-z0-9\-]{0,63}")


def competition_not_found(slug: str) -> Problem:
    shown = slug if len(slug) <= 64 else slug[:61] + "..."
    return Problem(falcon.HTTP_404, "competition-not-found", "Competition not found",
                   f"there is no competition {shown!r}")


CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_code(code: str) -> None:
    """A question code in a path: anything no question can have is a 404 before any query."""
    if not CODE.fullmatch(code):
        shown = code if len(code) <= 64 else code[:61] + "..."
        raise Problem(falcon.HTTP_404, "question-not-found", "Question not found", f"there is no question {shown!r}")


def check_slug(slug: str) -> None:
    if not SLUG.fullmatch(slug):
        raise competition_not_found(slug)


def invalid(field: str, message: str, status: str = falcon.HTTP_422) -> Problem:
    return Problem(status, "validation-error", "Request validation failed", f"{field}: {message}",
                   errors=[{"field": field, "message": message}])


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def validation_problem(exc: msgspec.ValidationError, where: str = "body") -> Problem:
    """Turn msgspec's message into a field-level error, e.g. ``$.teamName`` -> ``teamName``."""
    message = str(exc)
    field = where
    match = _AT.search(message)
    if match:
        field = match.group("path").lstrip(".") or where
        message = message[: match.start()]
    missing = _MISSING.search(message)
    if missing:
        prefix = field + "." if field != where else ""
        field = prefix + missing.group("name")
    return invalid(field, message)


STATUS_KINDS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Request validation failed"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal-error", "Internal server error"),
    503: ("service-unavailable", "Service unavailable"),
}


def problem_body(error: falcon.HTTPError) -> dict[str, Any]:
    status = error.status_code
    kind, default_title = STATUS_KINDS.get(status, ("error", "Error"))
    if isinstance(error, Problem):
        kind = error.kind
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind,
        "title": error.title if isinstance(error, Problem) else default_title,
        "status": status,
    }
    if error.description:
        body["detail"] = error.description
    if isinstance(error, Problem):
        if error.errors:
            body["errors"] = error.errors
        body.update(error.extra)
    return body


def serialize_problem(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    resp.data = msgspec.json.encode(problem_body(error))
    resp.content_type = PROBLEM
    resp.append_header("Vary", "Accept")


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise Problem(falcon.HTTP_500, "internal-error", "Internal server error",
                  "the request could not be completed; it has been logged") from ex


def register_error_handlers(app: falcon.App) -> None:
    app.set_error_serializer(serialize_problem)
    # Falcon picks the most specific handler, so HTTPError keeps its own; this only
    # catches bugs, which still answer problem+json.
    app.add_error_handler(Exception, handle_unexpected)
