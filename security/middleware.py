"""Every mutating HTTP request leaves exactly one audit record."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from security.audit import Actor, RequestAudit, audit_log, client_ip, current_request
from security.models import AuditRecord, Outcome

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def outcome_for(response: HttpResponse) -> str:
    """What an HTTP answer says about how the request ended."""
    status = response.status_code
    if status in (301, 302, 303) and "next=" in urlsplit(response.get("Location", "")).query:
        return Outcome.DENIED  # sent to a login page: not allowed as who it was
    if status >= 500:
        return Outcome.ERROR
    if status in (401, 403, 404, 405):
        return Outcome.DENIED
    if status >= 400:
        return Outcome.INVALID
    return Outcome.SUCCESS


def route_action(request: HttpRequest) -> str:
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return "http.unknown"
    return f"http.{match.view_name or match.url_name or 'unnamed'}"


class AuditMiddleware:
    """Track the records a request writes; write one itself if a mutating request wrote none.

    Services record successes (and the failures they understand) inside their own transaction.
    A request refused before reaching a service (no permission, bad form, 404), or one whose
    transaction rolled back, still gets one record here, with the outcome its status implies.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in MUTATING_METHODS:
            return self.get_response(request)
        ctx = RequestAudit(ip=client_ip(request))
        token = current_request.set(ctx)
        try:
            response = self.get_response(request)
        finally:
            current_request.reset(token)
        # A record written inside a transaction that later rolled back is gone: count survivors.
        if not ctx.record_ids or not AuditRecord.objects.filter(pk__in=ctx.record_ids).exists():
            audit_log(
                actor=Actor.from_request(request),
                action=route_action(request),
                outcome=outcome_for(response),
                target_repr=request.path[:200],
                detail={"method": request.method, "status": response.status_code},
            )
        return response
