"""Tenant pages for security groups and their rules, under /t/<tenant>/security-groups/."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from compute.models import Protocol, SecurityGroup, SecurityRule
from compute.services import networks as svc
from compute.ui.networks import Forms, confirm_delete, live_instances, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

GROUP_FORMS: Forms = {"create": ("name", "description"), "rule": ("protocol", "port_min", "port_max", "cidr")}


def _groups(tenant: Tenant) -> Any:
    return SecurityGroup.objects.for_tenant(tenant).prefetch_related(
        Prefetch("rules", queryset=SecurityRule.objects.for_tenant(tenant)),
        Prefetch("instances", queryset=live_instances(tenant), to_attr="live"),
    )


def _group(tenant: Tenant, pk: int) -> SecurityGroup:
    return get_object_or_404(_groups(tenant), pk=pk)


def _groups_page(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    error: ServiceError | None = None,
    form: str = "create",
    row: Any = None,
) -> HttpResponse:
    context = {"tenant": tenant, "role": role, "groups": _groups(tenant)}
    return page(
        request, "compute/networks/secgroups.html", context, GROUP_FORMS, error=error, form=form, row=row
    )


def _group_page(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    group: SecurityGroup,
    error: ServiceError | None = None,
    form: str = "rule",
    row: Any = None,
) -> HttpResponse:
    context = {
        "tenant": tenant,
        "role": role,
        "group": group,
        "protocols": Protocol.choices,
        "defaults": {"protocol": Protocol.TCP, "cidr": "0.0.0.0/0"},
    }
    return page(
        request, "compute/networks/secgroup.html", context, GROUP_FORMS, error=error, form=form, row=row
    )


@login_required
@require_http_methods(["GET", "POST"])
def secgroups_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """List the tenant's security groups with their rules; a POST creates one."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    if request.method == "GET":
        return _groups_page(request, obj, role)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.group_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=request.POST.get("name", "").strip(),
            description=request.POST.get("description", "").strip(),
        ),
        lambda g: f"Created security group {g.name}; add its rules below.",
        lambda g: redirect("ui-secgroup", tenant=obj.slug, pk=g.pk),
        lambda exc: _groups_page(request, obj, role, exc),
    )


@login_required
@require_GET
def secgroup_page(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """One security group: its rules, the instances that use it, and the add-rule form."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    return _group_page(request, obj, role, _group(obj, pk))


@login_required
@require_http_methods(["GET", "POST"])
def secgroup_delete(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """GET: the confirmation page; POST: delete a security group no live instance uses."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    group = _group(obj, pk)
    require_role(role, Role.MEMBER, obj)
    rules = len(group.rules.all())
    return confirm_delete(
        request,
        obj,
        what="security group",
        name=group.name,
        consequence=f"Its rules ({rules}) are deleted with it." if rules else "It has no rules.",
        remedy="Take the group off those instances first (in the API, PUT "
        "…/instances/<id>/security-groups/ sets an instance's groups), or delete them.",
        back=reverse("ui-secgroup", kwargs={"tenant": obj.slug, "pk": group.pk}),
        in_use=lambda: svc.group_in_use(group),
        delete=lambda: svc.group_delete(actor=Actor.from_request(request), group=group),
        done=reverse("ui-secgroups", kwargs={"tenant": obj.slug}),
    )


@login_required
@require_POST
def rule_add(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """Add an ingress rule to a security group."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    group = _group(obj, pk)
    require_role(role, Role.MEMBER, obj)
    data = request.POST
    return run(
        request,
        lambda: svc.rule_create(
            actor=Actor.from_request(request),
            group=group,
            protocol=data.get("protocol", "").strip(),
            cidr=data.get("cidr", "").strip(),
            port_min=data.get("port_min", "").strip(),
            port_max=data.get("port_max", "").strip(),
        ),
        lambda r: f"Added rule {r} to {group.name}.",
        lambda _: redirect("ui-secgroup", tenant=obj.slug, pk=group.pk),
        lambda exc: _group_page(request, obj, role, group, exc),
    )


@login_required
@require_POST
def rule_delete(request: HttpRequest, tenant: str, pk: int, rule: int) -> HttpResponse:
    """Remove one rule of a security group."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    group = _group(obj, pk)
    found = get_object_or_404(SecurityRule.objects.for_tenant(obj), group=group, pk=rule)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.rule_delete(actor=Actor.from_request(request), rule=found),
        lambda _: f"Removed rule {found} from {group.name}.",
        lambda _: redirect("ui-secgroup", tenant=obj.slug, pk=group.pk),
        lambda exc: _group_page(request, obj, role, group, exc, form="row", row=found.pk),
    )
