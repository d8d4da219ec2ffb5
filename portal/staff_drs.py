"""The staff DRS page: the balancer's settings, new instances waiting for staff to place them
(manual mode), the latest pass with each host's load before and after, and its recommendations
with their explanations, to apply one by one or all at once.

Reads are the models' (the pass keeps its summary); the writes go through compute.services.drs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from compute.models import Flavor, Host
from compute.services.drs import drs_apply, drs_apply_all, drs_pass_run, drs_what_if
from compute.services.drs_placement import drs_place, drs_place_all, drs_place_reject, host_named
from core.errors import ServiceError
from portal.staff_views import staff_required
from scheduler.drs import LEVELS
from scheduler.models import (
    DrsPass,
    DrsPassKind,
    DrsPlacement,
    DrsRecommendation,
    DrsSettings,
    PlacementState,
    RecommendationState,
)
from security.audit import Actor

MOVE_PERMISSION = "compute.change_host"
RECENT = 30


def what_if_view(drs_pass: DrsPass | None) -> dict[str, Any] | None:
    """A what-if pass as the page shows it: its changes, each host's three loads, its moves."""
    if drs_pass is None:
        return None
    summary = drs_pass.summary
    hosts = [
        {**h, **{f"{k}_pct": round(h[k] * 100) for k in ("today", "changed", "after")}}
        for h in summary.get("hosts", [])
    ]
    return {"pass": drs_pass, "hosts": hosts, "summary": summary}


def drs_overview(what_if_id: str | None = None) -> dict[str, Any]:
    settings = DrsSettings.current()
    latest = DrsPass.objects.exclude(kind=DrsPassKind.WHAT_IF).first()
    hosts = []
    if latest is not None:
        for line in latest.summary.get("hosts", []):
            hosts.append(
                {
                    **line,
                    "before_pct": round(line["before"] * 100),
                    "after_pct": round(line["after"] * 100),
                    "automation": latest.summary.get("automation", {}).get(line["host"], ""),
                }
            )
    recommendations = DrsRecommendation.objects.select_related("instance__tenant", "source", "target")
    real = Host.objects.filter(simulated=False)
    placements = DrsPlacement.objects.select_related("instance__tenant", "instance__flavor", "target", "host")
    return {
        "placements": list(placements.filter(state=PlacementState.WAITING).order_by("created", "pk")),
        "placed": list(placements.exclude(state=PlacementState.WAITING)[:RECENT]),
        "settings": settings,
        "level": LEVELS.get(settings.threshold),
        "latest": latest,
        "hosts": hosts,
        "plan": list(recommendations.filter(drs_pass=latest)) if latest else [],
        "recent": list(recommendations.exclude(drs_pass=latest)[:RECENT]) if latest else [],
        "waiting": (RecommendationState.PROPOSED, RecommendationState.APPROVED),
        "what_if": what_if_view(
            DrsPass.objects.filter(kind=DrsPassKind.WHAT_IF, pk=int(what_if_id)).first()
            if what_if_id and what_if_id.isdigit()
            else None
        ),
        "host_names": list(real.order_by("name").values_list("name", flat=True)[:500]),
        "flavors": list(Flavor.objects.order_by("name").values_list("name", flat=True)),
    }


@staff_required
@require_GET
def drs(request: HttpRequest) -> HttpResponse:
    context = drs_overview(request.GET.get("what_if"))
    context["can_move"] = request.user.has_perm(MOVE_PERMISSION)
    return render(request, "staff/drs.html", context)


def _may_move(request: HttpRequest) -> None:
    if not request.user.has_perm(MOVE_PERMISSION):
        raise PermissionDenied("applying DRS moves needs the change_host permission")


def _decide(request: HttpRequest, decision: Callable[[], str]) -> HttpResponse:
    """A staff decision on the page (change_host first): what it did, or the service's reason for
    refusing it, as a message; back to the page either way."""
    _may_move(request)
    try:
        messages.success(request, decision())
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("staff-drs")


@staff_required
@require_POST
def drs_run(request: HttpRequest) -> HttpResponse:
    _may_move(request)
    done = drs_pass_run(
        kind=DrsPassKind.REQUESTED, actor=Actor.from_request(request), requested_by=request.user
    )
    if done is not None:
        messages.success(request, f"Pass {done.pk}: {done.moves} move(s) recommended.")
    return redirect("staff-drs")


@staff_required
@require_POST
def drs_apply_one(request: HttpRequest, pk: int) -> HttpResponse:
    def apply() -> str:
        rec = get_object_or_404(DrsRecommendation, pk=pk)
        done = drs_apply(actor=Actor.from_request(request), recommendation=rec, user=request.user)
        return f"{done.instance.name}: {done.get_state_display()}. {done.reason}".strip()

    return _decide(request, apply)


@staff_required
@require_POST
def drs_apply_pass(request: HttpRequest, pk: int) -> HttpResponse:
    _may_move(request)
    drs_pass = get_object_or_404(DrsPass, pk=pk)
    count = drs_apply_all(actor=Actor.from_request(request), drs_pass=drs_pass, user=request.user)
    messages.success(request, f"{count} recommendation(s) approved; they start a few at a time.")
    return redirect("staff-drs")


@staff_required
@require_POST
def drs_what_if_run(request: HttpRequest) -> HttpResponse:
    """Staff: a what-if pass with the form's changes (nothing moves); the page then shows it."""
    post = request.POST

    def number(name: str, default: str, kind: type = int) -> Any:
        raw = post.get(name, "").strip() or default
        try:
            return kind(raw)
        except ValueError:
            raise ServiceError(name, "number", f"{name}: {raw!r} is not a number") from None

    try:
        capacity: dict[str, dict[str, int]] = {}
        if post.get("capacity_host"):
            sizes = {"cpus": number("capacity_cpus", "0"), "ram_mib": number("capacity_ram_mib", "0")}
            capacity[post["capacity_host"]] = {k: v for k, v in sizes.items() if v}
        done = drs_what_if(
            actor=Actor.from_request(request),
            requested_by=request.user,
            maintenance=[post["maintenance"]] if post.get("maintenance") else [],
            capacity=capacity,
            add_flavor=post.get("add_flavor", ""),
            add_count=number("add_count", "0"),
            add_kind=post.get("add_kind", "vm"),
            busy=number("busy", "1", float),
            threshold_level=number("threshold", "0") or None,
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("staff-drs")
    return redirect(f"{reverse('staff-drs')}?what_if={done.pk}#what-if")


@staff_required
@require_POST
def drs_place_one(request: HttpRequest, pk: int) -> HttpResponse:
    """Place a waiting instance on the recommended host, or on the form's ``host``."""

    def place() -> str:
        held = get_object_or_404(DrsPlacement, pk=pk)
        host = host_named(request.POST.get("host", ""))
        done = drs_place(actor=Actor.from_request(request), placement=held, host=host, user=request.user)
        host_name = done.host.name if done.host else ""
        return f"{done.instance.name} placed on {host_name}; it is being created."

    return _decide(request, place)


@staff_required
@require_POST
def drs_reject_one(request: HttpRequest, pk: int) -> HttpResponse:
    """Refuse a waiting instance with the form's reason (its owners read it)."""

    def reject() -> str:
        held = get_object_or_404(DrsPlacement, pk=pk)
        reason = request.POST.get("reason", "")
        done = drs_place_reject(
            actor=Actor.from_request(request), placement=held, reason=reason, user=request.user
        )
        return f"{done.instance.name} refused."

    return _decide(request, reject)


@staff_required
@require_POST
def drs_place_waiting(request: HttpRequest) -> HttpResponse:
    """Place every waiting instance on its recommended host."""
    _may_move(request)
    placed, errors = drs_place_all(actor=Actor.from_request(request), user=request.user)
    messages.success(request, f"{placed} instance(s) placed.")
    for error in errors:
        messages.error(request, error)
    return redirect("staff-drs")
