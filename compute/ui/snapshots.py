"""Tenant page for the snapshots of all the tenant's instances, under /t/<tenant>/snapshots/.

Reverting and deleting are asynchronous: each creates an Operation, and the page says which.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_POST

from compute.models import Operation, OperationKind, OperationState, Snapshot
from compute.services import snapshots as svc
from compute.ui.networks import Forms, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

SNAPSHOT_KINDS = (OperationKind.SNAPSHOT, OperationKind.REVERT, OperationKind.DELETE_SNAPSHOT)
FORMS: Forms = {}


def _snapshots(tenant: Tenant) -> Any:
    return Snapshot.objects.for_tenant(tenant).select_related("instance")


def _page(
    request: HttpRequest, tenant: Tenant, role: Role, error: ServiceError | None = None, row: Any = None
) -> HttpResponse:
    snapshots = list(_snapshots(tenant).order_by("instance__name", "created", "pk"))
    # Unfinished snapshot operations, by the snapshot they act on: their rows show what is under way.
    pending: dict[int, Operation] = {}
    for op in Operation.objects.for_tenant(tenant).filter(
        kind__in=SNAPSHOT_KINDS, state__in=(OperationState.PENDING, OperationState.RUNNING)
    ):
        snapshot = op.params.get("snapshot")
        if isinstance(snapshot, int):
            pending.setdefault(snapshot, op)
    rows = [(snap, pending.get(snap.pk)) for snap in snapshots]
    context = {"tenant": tenant, "role": role, "rows": rows}
    form = "row" if error is not None else None
    return page(request, "compute/networks/snapshots.html", context, FORMS, error=error, form=form, row=row)


@login_required
@require_GET
def snapshots_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """Every snapshot of the tenant's instances, with revert and delete for members and owners."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    return _page(request, obj, role)


def _act(request: HttpRequest, tenant: str, pk: int, verb: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    snapshot = get_object_or_404(_snapshots(obj), pk=pk)
    require_role(role, Role.MEMBER, obj)
    service = svc.snapshot_revert if verb == "revert" else svc.snapshot_delete
    what = f"{snapshot.instance.name}@{snapshot.name}"
    return run(
        request,
        lambda: service(actor=Actor.from_request(request), snapshot=snapshot),
        lambda op: f"Requested {op.get_kind_display().lower()} {what}: operation {op.uuid} is {op.state}.",
        lambda _: redirect("ui-snapshots", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc, row=snapshot.pk),
    )


@login_required
@require_POST
def snapshot_revert(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """Revert the snapshot's instance to it (an Operation)."""
    return _act(request, tenant, pk, "revert")


@login_required
@require_POST
def snapshot_delete(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """Delete the snapshot (an Operation)."""
    return _act(request, tenant, pk, "delete")
