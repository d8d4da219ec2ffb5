"""Liveness and readiness endpoints for load balancers and operators."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal.preflight import run_checks


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer as long as the process serves requests; touches no dependency."""
    return HttpResponse("ok\n", content_type="text/plain")


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Report the database and Redis, one line each; 503 when either fails.

    libvirt is not the web process's to reach (it never loads it): each compute host's agent checks
    its own before it starts, and its heartbeat says it is alive.

    Plain text by default (one ``name: ok|FAIL (detail)`` line per dependency); JSON with
    ``?format=json`` or ``Accept: application/json``.
    """
    results = run_checks()
    status = 200 if all(r.ok for r in results) else 503
    wants_json = request.GET.get("format") == "json" or "application/json" in request.headers.get(
        "Accept", ""
    )
    if wants_json:
        return JsonResponse(
            {
                "ready": status == 200,
                "checks": {
                    r.name: {"ok": r.ok, "detail": r.detail, "millis": round(r.millis, 1)} for r in results
                },
            },
            status=status,
        )
    body = "".join(r.line() + "\n" for r in results)
    return HttpResponse(body, status=status, content_type="text/plain")
