"""Instance forms and actions of the web UI: create, start/stop/reboot, resize, snapshot, delete.

Each POST calls one service. A refusal comes back on the form, next to the field it names, with
the service's status code; a success redirects (POST, redirect, GET) with a message.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from compute.models import OperationKind
from compute.services import instances as svc
from compute.services import resize, snapshots
from compute.ui.forms import InstanceCreateForm, ResizeForm, add_service_error, flavor_summary
from compute.ui.instances import detail_context, instance_of
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import PriorityClass, Quota, Role, Tenant
from tenants.selectors import quota_report

ACTIONS = {"start": OperationKind.START, "stop": OperationKind.STOP, "reboot": OperationKind.REBOOT}


def _create_page(
    request: HttpRequest, tenant: Tenant, form: InstanceCreateForm, status: int = 200
) -> HttpResponse:
    quota = quota_report(tenant)
    catalog = {
        "flavors": {
            f.name: {
                "vcpus": f.vcpus,
                "ram_mib": f.ram_mib,
                "min_ram_mib": f.min_ram_mib,
                "disk_gib": f.disk_gib,
                "allocation": f.allocation,
                "summary": flavor_summary(f),
            }
            for f in form.flavors
        },
        "images": {i.name: {"kind": "container" if i.kind == "rootfs" else "vm"} for i in form.images},
        "quota": quota["resources"],
    }
    context = {"tenant": tenant, "form": form, "catalog": catalog, "quota": quota}
    return render(request, "compute/instances/new.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def instance_new(request: HttpRequest, tenant: str) -> HttpResponse:
    """The create form; on POST, one instance_create, its refusal shown on the field it names."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    require_role(role, Role.MEMBER, obj)
    max_priority = Quota.objects.for_tenant(obj).values_list("max_priority", flat=True).first()
    max_priority = PriorityClass.NORMAL if max_priority is None else max_priority
    if request.method == "GET":
        return _create_page(request, obj, InstanceCreateForm(obj, max_priority))
    form = InstanceCreateForm(obj, max_priority, request.POST)
    if not form.is_valid():
        return _create_page(request, obj, form, status=400)
    try:
        operation = svc.instance_create(
            actor=Actor.from_request(request), tenant=obj, **form.service_kwargs()
        )
    except ServiceError as exc:
        add_service_error(form, exc)
        return _create_page(request, obj, form, status=exc.status)
    instance = operation.instance
    if operation.state == "failed":
        messages.error(request, f"{instance.name} could not be placed: {operation.error}")
    elif instance.state == "queued":
        messages.info(request, f"{instance.name} waits for room in the admission queue.")
    elif instance.state == "awaiting":
        messages.info(request, f"{instance.name} waits for staff to choose its host.")
    else:
        messages.success(request, f"Creating {instance.name} ({instance.get_kind_display().lower()}).")
    return redirect("ui-instance", tenant=obj.slug, pk=instance.uuid)


def _refused(
    request: HttpRequest, tenant: Tenant, role: Role, instance: Any, exc: ServiceError
) -> HttpResponse:
    """The instance page again, with the refusal next to the form field it names."""
    context = detail_context(tenant, role, instance)
    context["error"] = exc
    return render(request, "compute/instances/detail.html", context, status=exc.status)


def _acted(
    request: HttpRequest, tenant: Tenant, role: Role, instance: Any, call: Any, done: str
) -> HttpResponse:
    """Run one service call for the instance page: a message and a redirect, or the page with the error."""
    try:
        operation = call()
    except ServiceError as exc:
        return _refused(request, tenant, role, instance, exc)
    messages.success(request, f"{done} (operation {str(operation.uuid)[:8]}).")
    return redirect("ui-instance", tenant=tenant.slug, pk=instance.uuid)


def _instance_for_action(request: HttpRequest, tenant: str, pk: str) -> tuple[Tenant, Role, Any]:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = instance_of(obj, pk)
    require_role(role, Role.MEMBER, obj)
    return obj, role, instance


@login_required
@require_POST
def instance_action(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    """Start, stop or reboot (the ``action`` field)."""
    obj, role, instance = _instance_for_action(request, tenant, pk)
    kind = ACTIONS.get(request.POST.get("action", ""))
    if kind is None:
        exc = ServiceError("action", "choice", f"action must be one of {', '.join(ACTIONS)}")
        return _refused(request, obj, role, instance, exc)
    actor = Actor.from_request(request)
    return _acted(
        request,
        obj,
        role,
        instance,
        lambda: svc.instance_action(actor=actor, instance=instance, kind=kind),
        f"{kind.label} requested for {instance.name}",
    )


@login_required
@require_POST
def instance_resize(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    obj, role, instance = _instance_for_action(request, tenant, pk)
    form = ResizeForm(request.POST)
    actor = Actor.from_request(request)
    if not form.is_valid():
        message = "; ".join(str(e) for errors in form.errors.values() for e in errors)
        field = next((f for f in form.errors if f != "__all__"), "memory_mib")
        return _refused(request, obj, role, instance, ServiceError(field, "invalid", message))
    data = form.cleaned_data
    if data.get("memory_mib") is not None:
        return _acted(
            request,
            obj,
            role,
            instance,
            lambda: resize.instance_set_memory(actor=actor, instance=instance, memory_mib=data["memory_mib"]),
            f"Memory of {instance.name} going to {data['memory_mib']} MiB",
        )
    return _acted(
        request,
        obj,
        role,
        instance,
        lambda: resize.instance_resize(
            actor=actor, instance=instance, vcpus=data["vcpus"], ram_mib=data["ram_mib"]
        ),
        f"{instance.name} resizing to {data['vcpus']} vCPU / {data['ram_mib']} MiB",
    )


@login_required
@require_POST
def instance_snapshot(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    obj, role, instance = _instance_for_action(request, tenant, pk)
    name = request.POST.get("name", "").strip()
    actor = Actor.from_request(request)
    return _acted(
        request,
        obj,
        role,
        instance,
        lambda: snapshots.snapshot_create(actor=actor, instance=instance, name=name),
        f"Snapshot {name} of {instance.name} requested",
    )


@login_required
@require_http_methods(["GET", "POST"])
def instance_delete(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    """GET: the confirmation page (works without JavaScript); POST: delete."""
    obj, _role, instance = _instance_for_action(request, tenant, pk)
    if request.method == "GET":
        return render(request, "compute/instances/delete.html", {"tenant": obj, "instance": instance})
    if request.POST.get("confirm") != instance.name:
        context = {"tenant": obj, "instance": instance, "error": f"type {instance.name} to confirm"}
        return render(request, "compute/instances/delete.html", context, status=400)
    actor = Actor.from_request(request)
    try:
        svc.instance_delete(actor=actor, instance=instance)
    except ServiceError as exc:
        context = {"tenant": obj, "instance": instance, "error": exc.message}
        return render(request, "compute/instances/delete.html", context, status=exc.status)
    messages.success(request, f"Deleting {instance.name}.")
    return redirect("ui-instances", tenant=obj.slug)
