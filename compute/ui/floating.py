"""Tenant pages for reachable addresses: floating addresses under /t/<tenant>/floating-ips/, and an
instance's host port forwards (their forms are on the instance's page).

As the network pages do: a POST calls one service; success redirects back with a message, a
ServiceError re-renders the page with the error next to the field it names (its status). Releasing
an address goes through the confirmation page (type the address). The NAT itself is the host
agent's work, asked for by the services after commit (compute.services.floating_ips).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from compute.models import FloatingIP, FloatingPool, Instance, InstanceState, PortForward
from compute.services import floating_ips as svc
from compute.ui.instances import detail_context, instance_of
from compute.ui.networks import Forms, confirm_delete, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

FORMS: Forms = {"allocate": ("pool",), "row": ("instance",)}


def _floating_ips(tenant: Tenant) -> Any:
    return FloatingIP.objects.for_tenant(tenant).select_related("pool", "instance")


def _floating_ip(tenant: Tenant, pk: int) -> FloatingIP:
    return get_object_or_404(_floating_ips(tenant), pk=pk)


def associable(tenant: Tenant) -> Any:
    """The tenant's instances a floating address can point at: on a tenant network, with an
    address, alive, and without one already."""
    return (
        Instance.objects.for_tenant(tenant)
        .exclude(state__in=svc.NOT_REACHABLE)
        .exclude(network=None)
        .exclude(ip_address=None)
        .filter(floating_ips__isnull=True)
        .select_related("network")
        .order_by("name")
    )


def _page(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    error: ServiceError | None = None,
    form: str | None = None,
    row: Any = None,
) -> HttpResponse:
    context = {
        "tenant": tenant,
        "role": role,
        "floating_ips": _floating_ips(tenant).order_by("address"),
        "pools": FloatingPool.objects.order_by("name"),
        "targets": list(associable(tenant)),
    }
    return page(
        request, "compute/floating/floating_ips.html", context, FORMS, error=error, form=form, row=row
    )


@login_required
@require_http_methods(["GET", "POST"])
def floating_ips_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """The tenant's floating addresses; a POST allocates one from a pool (members and owners)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    if request.method == "GET":
        return _page(request, obj, role)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.floating_ip_allocate(
            actor=Actor.from_request(request), tenant=obj, pool=request.POST.get("pool", "").strip() or None
        ),
        lambda f: f"Allocated {f.address} from pool {f.pool.name}.",
        lambda _: redirect("ui-floating-ips", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc, "allocate"),
    )


def _instance_named(tenant: Tenant, ref: str) -> Instance:
    """The tenant's instance with the uuid REF (the select's value), or a ServiceError on ``instance``."""
    try:
        key = uuid.UUID(ref)
    except ValueError:
        raise ServiceError("instance", "exists", "choose an instance") from None
    found = Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED).filter(uuid=key).first()
    if found is None:
        raise ServiceError("instance", "exists", "unknown instance")
    return found


@login_required
@require_POST
def floating_ip_associate(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """Point the address at an instance of the tenant (the form's ``instance``, its uuid)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    fip = _floating_ip(obj, pk)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.floating_ip_associate(
            actor=Actor.from_request(request),
            fip=fip,
            instance=_instance_named(obj, request.POST.get("instance", "")),
        ),
        lambda f: f"{f.address} now reaches {f.instance.name} ({f.instance.ip_address}).",
        lambda _: redirect("ui-floating-ips", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc, "row", fip.pk),
    )


@login_required
@require_POST
def floating_ip_disassociate(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    fip = _floating_ip(obj, pk)
    require_role(role, Role.MEMBER, obj)
    was = fip.instance
    return run(
        request,
        lambda: svc.floating_ip_disassociate(actor=Actor.from_request(request), fip=fip),
        lambda f: f"{f.address} reaches nothing now{f' (it was {was.name})' if was else ''}.",
        lambda _: redirect("ui-floating-ips", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc, "row", fip.pk),
    )


@login_required
@require_http_methods(["GET", "POST"])
def floating_ip_release(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """GET: the confirmation page (type the address); POST: give it back to its pool."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    fip = _floating_ip(obj, pk)
    require_role(role, Role.MEMBER, obj)
    listing = reverse("ui-floating-ips", kwargs={"tenant": obj.slug})
    using = f" {fip.instance.name} is no longer reachable at it." if fip.instance else ""
    return confirm_delete(
        request,
        obj,
        what="floating address",
        name=fip.address,
        consequence=f"It goes back to the pool {fip.pool.name}; another tenant may get it.{using}",
        remedy="",
        back=listing,
        in_use=lambda: None,  # an associated address is disassociated first by the release
        delete=lambda: svc.floating_ip_release(actor=Actor.from_request(request), fip=fip),
        done=listing,
    )


# -- port forwards (forms on the instance's page) ------------------------------------------------
def _instance_page(
    request: HttpRequest, tenant: Tenant, role: Role, instance: Instance, exc: ServiceError
) -> HttpResponse:
    """The instance's page again, with the refusal next to the port forward form."""
    context = detail_context(tenant, role, instance)
    context["error"] = exc
    return render(request, "compute/instances/detail.html", context, status=exc.status)


def _instance_for_write(request: HttpRequest, tenant: str, pk: Any) -> tuple[Tenant, Role, Instance]:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = instance_of(obj, pk)
    require_role(role, Role.MEMBER, obj)
    return obj, role, instance


@login_required
@require_POST
def port_forward_add(request: HttpRequest, tenant: str, pk: Any) -> HttpResponse:
    """Forward a free host port to the form's tcp ``port`` of the instance."""
    obj, role, instance = _instance_for_write(request, tenant, pk)
    port = request.POST.get("port", "").strip()
    try:
        forward = svc.port_forward_create(actor=Actor.from_request(request), instance=instance, port=port)
    except ServiceError as exc:
        return _instance_page(request, obj, role, instance, exc)
    where = svc.host_address(instance) or "the host"
    messages.success(
        request, f"Port {forward.port} of {instance.name} is reached at {where}:{forward.host_port}."
    )
    return redirect("ui-instance", tenant=obj.slug, pk=instance.uuid)


@login_required
@require_POST
def port_forward_remove(request: HttpRequest, tenant: str, pk: Any, forward: int) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = instance_of(obj, pk)
    row = get_object_or_404(PortForward.objects.for_tenant(obj), instance=instance, pk=forward)
    require_role(role, Role.MEMBER, obj)
    svc.port_forward_delete(actor=Actor.from_request(request), forward=row)
    messages.success(
        request, f"Removed the forward of host port {row.host_port} to port {row.port} of {instance.name}."
    )
    return redirect("ui-instance", tenant=obj.slug, pk=instance.uuid)
