"""Instance pages of the web UI: the list (live), one instance's page, and the row the list
fetches for an instance it has not seen yet. The forms and actions are in views_instance_actions."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from compute.forms import ResizeForm, flavor_summary
from compute.models import Instance, InstanceKind, InstanceState, Operation, SecurityGroup, Snapshot
from tenants.access import tenant_for_request
from tenants.models import Role, Tenant

# The list's state filter: "active" hides what is gone or failed; the others are single states.
STATE_FILTERS = [("active", "Active"), ("", "All"), *InstanceState.choices]
PAGE = 200  # rows on the list page (newest first)


def instances_of(tenant: Tenant) -> Any:
    """The tenant's instances with what their rows show, in three queries whatever their number."""
    return (
        Instance.objects.for_tenant(tenant)
        .select_related("flavor", "image", "network", "server_group")
        .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.for_tenant(tenant)))
    )


def instance_of(tenant: Tenant, pk: str) -> Instance:
    return get_object_or_404(instances_of(tenant).exclude(state=InstanceState.DELETED), uuid=pk)


@login_required
@require_GET
def instance_list(request: HttpRequest, tenant: str) -> HttpResponse:
    """The tenant's instances, filtered by state, kind and name; states follow the live stream."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    state = request.GET.get("state", "active")
    kind = request.GET.get("kind", "")
    query = request.GET.get("q", "").strip()
    rows = instances_of(obj)
    if state == "active":
        rows = rows.exclude(state__in=[InstanceState.DELETED, InstanceState.ERROR])
    elif state in InstanceState.values:
        rows = rows.filter(state=state)
    if kind in InstanceKind.values:
        rows = rows.filter(kind=kind)
    if query:
        rows = rows.filter(Q(name__icontains=query) | Q(ip_address__startswith=query))
    counts = dict(
        Instance.objects.for_tenant(obj)
        .exclude(state=InstanceState.DELETED)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    context = {
        "tenant": obj,
        "role": role,
        "can_act": role.at_least(Role.MEMBER),
        "instances": list(rows.order_by("-created")[:PAGE]),
        "filters": {"state": state, "kind": kind, "q": query},
        "state_choices": STATE_FILTERS,
        "kind_choices": InstanceKind.choices,
        "counts": counts,
    }
    return render(request, "compute/instances/list.html", context)


@login_required
@require_GET
def instance_row(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    """One row of the list, for an instance the page learnt of from the live stream."""
    obj, _role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = get_object_or_404(instances_of(obj), uuid=pk)
    return render(request, "compute/instances/_row.html", {"tenant": obj, "i": instance})


def detail_context(tenant: Tenant, role: Role, instance: Instance) -> dict[str, Any]:
    """Everything one instance's page shows: its settings, operations, placement and snapshots."""
    from scheduler.models import PlacementDecision, QueueEntry, QueueState

    placement = PlacementDecision.objects.for_tenant(tenant).filter(instance=instance).first()
    queue = None
    if instance.state == InstanceState.QUEUED:
        from scheduler.admission import queue_statuses

        entries = list(
            QueueEntry.objects.for_tenant(tenant).filter(instance=instance, state=QueueState.WAITING)
        )
        queue = queue_statuses(entries).get(instance.pk)
    return {
        "tenant": tenant,
        "role": role,
        "can_act": role.at_least(Role.MEMBER),
        "instance": instance,
        "flavor_summary": flavor_summary(instance.flavor),
        "operations": list(
            Operation.objects.for_tenant(tenant).filter(instance=instance).order_by("-created")[:20]
        ),
        "snapshots": list(Snapshot.objects.for_tenant(tenant).filter(instance=instance)),
        "placement": placement.record if placement else None,
        "placed_at": placement.created if placement else None,
        "queue": queue,
        "resize_form": ResizeForm(),
    }


@login_required
@require_GET
def instance_detail(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = instance_of(obj, pk)
    return render(request, "compute/instances/detail.html", detail_context(obj, role, instance))
