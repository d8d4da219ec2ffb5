"""One error shape for the whole API: RFC 9457 problem details that name the field and the rule.

An exception no view handled reaches Django's 500 handler (``server_error``), DRF's views included
(they re-raise what is not an API error). When it comes from a dependency that is down for a while
(the database restarting, Redis unreachable), the answer is a 503 with ``Retry-After`` naming the
dependency, never a 500: problem+json under /api/ and for JSON asks (``/readyz?format=json``), a
plain page without a traceback elsewhere.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import redis
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.errors import HostUnavailable, ServiceError

PROBLEM_TYPE = "https://nubis.invalid/problems/"  # .invalid: a name, not a place to fetch
# What a parse or media-type error is about: the body, or the Content-Type header.
BODY_FIELDS: dict[type[Exception], str] = {
    exceptions.ParseError: "body",
    exceptions.UnsupportedMediaType: "Content-Type",
}

SERVICE_TITLES = {
    status.HTTP_409_CONFLICT: "Conflict",
    status.HTTP_503_SERVICE_UNAVAILABLE: "Service Unavailable",
}
RETRY_AFTER_SECONDS = 5  # a host's agent that did not answer: restarting, or its host is down

try:  # the PostgreSQL driver's own errors, for one raised outside Django's wrapper
    import psycopg

    _PSYCOPG_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
except ImportError:  # pragma: no cover - an SQLite-only install
    _PSYCOPG_ERRORS = ()
# What an outage of each dependency raises: Django's wrappers of the database driver's connection
# errors (a closed or refused connection, a server shutting down) and the driver's own; Redis's
# connection and timeout errors (kombu's errors for the broker carry them as their cause).
OUTAGES: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    ("database", (OperationalError, InterfaceError, *_PSYCOPG_ERRORS)),
    ("redis", (redis.ConnectionError, redis.TimeoutError)),
)
OUTAGE_RETRY_AFTER_SECONDS = 5  # a PostgreSQL restart takes a second or two; Redis about as long
OUTAGE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Service unavailable</title></head>
<body><h1>Service unavailable</h1>
<p>Nubis cannot reach its {dependency} at the moment. Try again in a few seconds.</p></body></html>
"""


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turn DRF's nested error detail into a flat list of {field, rule, message}."""
    errors: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            field = key if key != "non_field_errors" else ""
            errors += _flatten(value, f"{prefix}.{field}" if prefix and field else prefix or field)
    elif isinstance(detail, list):
        for item in detail:
            errors += _flatten(item, prefix)
    else:
        code = getattr(detail, "code", "invalid") or "invalid"
        errors.append({"field": prefix, "rule": str(code), "message": str(detail)})
    return errors


def problem_body(
    status_code: int, title: str, detail: str, kind: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The RFC 9457 document: type, title, status, detail, and the ``errors`` list when given."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status_code,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return body


def problem(
    status_code: int, title: str, detail: str, kind: str, errors: list[dict[str, str]] | None = None
) -> Response:
    body = problem_body(status_code, title, detail, kind, errors)
    return Response(body, status=status_code, content_type="application/problem+json")


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        errors = [{"field": exc.field, "rule": exc.rule, "message": exc.message}]
        title = SERVICE_TITLES.get(exc.status, "Invalid request")
        out = problem(exc.status, title, f"{exc.field}: {exc.message}", exc.rule, errors)
        if isinstance(exc, HostUnavailable):  # which host did not answer, and when to ask again
            out.data["host"] = exc.host
            out["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return out
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        summary = "; ".join(f"{e['field'] or 'request'}: {e['message']}" for e in errors)
        out = problem(response.status_code, "Invalid request", summary, "validation", errors)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = exc.default_code if isinstance(exc, exceptions.APIException) else "error"
        # A body DRF could not parse, or of a type it does not take: name what was wrong with it.
        field = BODY_FIELDS.get(type(exc))
        named = [{"field": field, "rule": str(code), "message": str(detail)}] if field else None
        out = problem(response.status_code, response.status_text, str(detail), str(code), named)
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            out[header] = response[header]
    return out


def plain_problem(
    status_code: int, title: str, detail: str, kind: str, errors: list[dict[str, str]] | None = None
) -> HttpResponse:
    """A problem+json answer made outside DRF (middleware, Django's error handlers)."""
    body = problem_body(status_code, title, detail, kind, errors)
    return HttpResponse(json.dumps(body), status=status_code, content_type="application/problem+json")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: problem details under /api/, the HTML page elsewhere."""
    if request.path.startswith("/api/"):
        return plain_problem(404, "Not Found", "No such resource.", "not_found")
    return defaults.page_not_found(request, exception or Http404())


def outage_of(exc: BaseException | None) -> str | None:
    """The dependency (``database``, ``redis``) whose outage raised ``exc``, or None.

    The exception's causes count too: a wrapper (kombu's OperationalError around Redis's, a
    Django error raised while handling a dropped connection) names the outage underneath."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 10:
        seen.add(id(exc))
        for dependency, kinds in OUTAGES:
            if isinstance(exc, kinds):
                return dependency
        exc = exc.__cause__ or exc.__context__
    return None


def wants_problem(request: HttpRequest) -> bool:
    """API routes, and requests that ask for JSON (``/readyz?format=json``), get problem+json."""
    if request.path.startswith("/api/"):
        return True
    accept = request.headers.get("Accept", "")
    return request.GET.get("format") == "json" or "json" in accept


def outage_response(request: HttpRequest, dependency: str) -> HttpResponse:
    """503 with Retry-After naming the dependency that is down; builds nothing that needs it."""
    if wants_problem(request):
        message = f"the {dependency} is unavailable; try again in a few seconds"
        response = plain_problem(
            503,
            "Service Unavailable",
            f"{dependency}: {message}",
            "unavailable",
            [{"field": dependency, "rule": "unavailable", "message": message}],
        )
    else:  # no template: rendering one may itself need the database (context processors)
        response = HttpResponse(
            OUTAGE_PAGE.format(dependency=dependency), status=503, content_type="text/html; charset=utf-8"
        )
    response["Retry-After"] = str(OUTAGE_RETRY_AFTER_SECONDS)
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 handler, called inside the ``except`` block of the exception no view handled.

    A dependency's outage answers 503 with Retry-After (see ``outage_response``); anything else is
    a 500: problem details under /api/, the HTML page elsewhere."""
    dependency = outage_of(sys.exc_info()[1])
    if dependency is not None:
        return outage_response(request, dependency)
    if request.path.startswith("/api/"):
        return plain_problem(
            500, "Internal Server Error", "The server failed; it was logged.", "server_error"
        )
    return defaults.server_error(request)
