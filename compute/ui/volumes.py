"""Tenant page for persistent volumes, under /t/<tenant>/volumes/: list, create, and one form per
action of a row (attach, detach, grow, snapshot, delete, delete a snapshot).

Making, growing, snapshotting and deleting answer once the host's agent did it; attaching and
detaching are Operations of the VM, and the page says which.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_http_methods, require_POST

from compute.models import Instance, InstanceKind, InstanceState, Volume, VolumeSnapshot
from compute.services import volumes as svc
from compute.ui.networks import Forms, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

FORMS: Forms = {"create": ("name", "size_gib", "image", "snapshot"), "row": ()}
ACTIONS = ("attach", "detach", "resize", "snapshot", "delete", "delete-snapshot")


def _page(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    error: ServiceError | None = None,
    form: str | None = None,
    row: Any = None,
) -> HttpResponse:
    volumes = list(svc.volumes_live(tenant).select_related("instance", "source_image").order_by("name"))
    snaps: dict[int, list[VolumeSnapshot]] = {}
    for snap in VolumeSnapshot.objects.for_tenant(tenant).filter(volume__in=volumes).order_by("created"):
        snaps.setdefault(snap.volume_id, []).append(snap)
    vms = Instance.objects.for_tenant(tenant).filter(
        kind=InstanceKind.VM, state__in=(InstanceState.RUNNING, InstanceState.STOPPED)
    )
    context = {
        "tenant": tenant,
        "role": role,
        "rows": [(v, snaps.get(v.pk, [])) for v in volumes],
        "vms": vms.order_by("name"),
        "all_snapshots": [s for rows in snaps.values() for s in rows],
        "defaults": {"size_gib": "1"},
    }
    return page(request, "compute/volumes/volumes.html", context, FORMS, error=error, form=form, row=row)


@login_required
@require_http_methods(["GET", "POST"])
def volumes_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """The tenant's volumes; members and owners create one here (POST)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    if request.method == "GET":
        return _page(request, obj, role)
    require_role(role, Role.MEMBER, obj)
    data = request.POST
    size = data.get("size_gib", "").strip()
    if size and not size.isdigit():
        return _page(
            request, obj, role, ServiceError("size_gib", "integer", "a whole number of GiB"), "create"
        )
    return run(
        request,
        lambda: svc.volume_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=data.get("name", "").strip(),
            size_gib=int(size) if size else None,
            image=data.get("image") or None,
            snapshot=data.get("snapshot") or None,
        ),
        lambda v: f"Volume {v.name} ({v.size_gib} GiB) is {v.state}.",
        lambda _: redirect("ui-volumes", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc, "create"),
    )


def _do(request: HttpRequest, actor: Actor, volume: Volume, action: str) -> Any:
    data = request.POST
    if action == "attach":
        return svc.volume_attach(actor=actor, volume=volume, instance=data.get("instance", ""))
    if action == "detach":
        return svc.volume_detach(actor=actor, volume=volume)
    if action == "resize":
        size = data.get("size_gib", "").strip()
        if not size.isdigit():
            raise ServiceError("size_gib", "integer", "a whole number of GiB")
        return svc.volume_resize(actor=actor, volume=volume, size_gib=int(size))
    if action == "snapshot":
        return svc.volume_snapshot_create(actor=actor, volume=volume, name=data.get("name", "").strip())
    if action == "delete-snapshot":
        ref = data.get("snapshot", "")
        snap = (
            VolumeSnapshot.objects.for_tenant(volume.tenant_id)
            .filter(volume=volume, pk=int(ref) if ref.isdigit() else -1)
            .first()
        )
        if snap is None:
            raise ServiceError("snapshot", "exists", f"unknown snapshot {ref!r}")
        return svc.volume_snapshot_delete(actor=actor, snapshot=snap)
    return svc.volume_delete(actor=actor, volume=volume)


def _said(volume: Volume, action: str, result: Any) -> str:
    if action in ("attach", "detach"):
        return f"Requested {action} of {volume.name}: operation {result.uuid} is {result.state}."
    return {
        "resize": f"Volume {volume.name} grew to {getattr(result, 'size_gib', '?')} GiB.",
        "snapshot": f"Took snapshot {getattr(result, 'name', '')} of {volume.name}.",
        "delete-snapshot": f"Deleted a snapshot of {volume.name}.",
    }.get(action, f"Deleted volume {volume.name}.")


@login_required
@require_POST
def volume_action(request: HttpRequest, tenant: str, pk: Any) -> HttpResponse:
    """One action on a volume, named by the form's ``action``."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    volume = get_object_or_404(svc.volumes_live(obj).select_related("instance"), uuid=pk)
    require_role(role, Role.MEMBER, obj)
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        return _page(
            request,
            obj,
            role,
            ServiceError("action", "choice", f"one of {', '.join(ACTIONS)}"),
            "row",
            volume.pk,
        )
    return run(
        request,
        lambda: _do(request, Actor.from_request(request), volume, action),
        lambda result: _said(volume, action, result),
        lambda _: redirect("ui-volumes", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc, "row", volume.pk),
    )
