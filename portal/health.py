"""Liveness and readiness endpoints for load balancers and operators."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from compute.selectors import operations_waiting
from core.preflight import CheckResult
from core.redaction import redact
from portal.preflight import run_checks

BROKER_DOWN = "new operations are accepted and wait for delivery until it is back"


def broker_state(results: list[CheckResult]) -> dict[str, Any]:
    """The Celery broker is the Redis of REDIS_URL (portal.settings): its check says how it is."""
    redis = next(r for r in results if r.name == "redis")
    same = settings.CELERY_BROKER_URL == settings.REDIS_URL
    return {"ok": redis.ok if same else None, "url": redact(settings.CELERY_BROKER_URL)}


def waiting_state() -> dict[str, Any] | None:
    """How many operations were accepted that no agent claimed yet, and the oldest one's age (None
    when the database cannot say). No names: /readyz answers anyone; the staff hosts page lists them."""
    try:
        found = operations_waiting(limit=0)
    except DatabaseError:
        return None
    return {"count": found["count"], "oldest_age_s": found["oldest_age_s"]}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer as long as the process serves requests; touches no dependency."""
    return HttpResponse("ok\n", content_type="text/plain")


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Report the database and Redis, one line each; 503 when either fails. Then the broker (the
    Redis of REDIS_URL) when it is down, and the operations accepted but not yet claimed by an
    agent, with the oldest one's age (compute.services.outbox sends them again).

    libvirt is not the web process's to reach (it never loads it): each compute host's agent checks
    its own before it starts, and its heartbeat says it is alive.

    Plain text by default (one ``name: ok|FAIL (detail)`` line per dependency); JSON with
    ``?format=json`` or ``Accept: application/json``.
    """
    results = run_checks()
    status = 200 if all(r.ok for r in results) else 503
    broker = broker_state(results)
    waiting = waiting_state() if results[0].ok else None
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
                "broker": {**broker, "detail": "" if broker["ok"] is not False else BROKER_DOWN},
                "operations_waiting": waiting,
            },
            status=status,
        )
    lines = [r.line() for r in results]
    if broker["ok"] is False:
        lines.append(f"broker: down ({broker['url']}): {BROKER_DOWN}")
    if waiting is None:
        lines.append("operations waiting for delivery: unknown (the database did not answer)")
    else:
        oldest = f", the oldest for {waiting['oldest_age_s']:.0f} s" if waiting["count"] else ""
        lines.append(f"operations waiting for delivery: {waiting['count']}{oldest}")
    return HttpResponse("".join(line + "\n" for line in lines), status=status, content_type="text/plain")
