"""No query string may carry a NUL character: refused at the entry, before any view reads it.

PostgreSQL text cannot hold NUL (``\\x00``): a value with one that reaches a query fails inside the
database driver, a 500. No name, address, id or cursor of Nubis has one, so a query parameter (name
or value) with a NUL is refused on every route, whatever its method, before anything reads it:

- under /api/: 400 problem+json, the same shape as any invalid parameter (``errors`` names it);
- elsewhere (pages, admin): a plain 400.

A route added later is covered without a word, and no list, filter or page checks it on its own.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from portal.api_errors import plain_problem

API_PREFIX = "/api/"
NUL = "\x00"
MESSAGE = "must not contain NUL characters"


def nul_parameter(request: HttpRequest) -> str | None:
    """The name of the first query parameter whose name or value holds a NUL, or None."""
    for name, values in request.GET.lists():
        if NUL in name or any(NUL in value for value in values):
            return name
    return None


def _printable(name: str) -> str:
    """The parameter's name as it can be shown: a NUL in the name itself written as ``\\x00``."""
    return name.replace(NUL, "\\x00")


def refusal(request: HttpRequest) -> HttpResponse | None:
    """The 400 for a query string holding a NUL, or None when it holds none."""
    name = nul_parameter(request)
    if name is None:
        return None
    field = _printable(name)
    if request.path.startswith(API_PREFIX):
        errors = [{"field": field, "rule": "invalid", "message": MESSAGE}]
        return plain_problem(400, "Invalid request", f"{field}: {MESSAGE}", "validation", errors)
    return HttpResponseBadRequest(
        f"The query parameter {field!r} {MESSAGE}.\n", content_type="text/plain; charset=utf-8"
    )


class QueryStringMiddleware:
    """Refuse a request whose query string holds a NUL (a 400 naming the parameter)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        return self.get_response(request)
