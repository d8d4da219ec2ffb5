"""Tenant page for server groups (affinity and anti-affinity), under /t/<tenant>/server-groups/."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from compute.models import GroupPolicy, ServerGroup
from compute.services import server_groups as svc
from compute.ui.networks import Forms, confirm_delete, live_instances, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

# What each policy means for where the scheduler puts the group's members, in plain words.
POLICY_HELP = {
    GroupPolicy.AFFINITY: "Every member runs on the same host. A new member that does not fit on "
    "that host is not placed anywhere else.",
    GroupPolicy.ANTI_AFFINITY: "Every member runs on a different host. A new member that finds no "
    "host without another member is not placed.",
    GroupPolicy.SOFT_AFFINITY: "Members go to the same host when it has room, and elsewhere when it has not.",
    GroupPolicy.SOFT_ANTI_AFFINITY: "Members go to different hosts when there are enough of them, and "
    "share a host when there are not.",
}
FORMS: Forms = {"create": ("name", "policy")}


def _groups(tenant: Tenant) -> Any:
    return ServerGroup.objects.for_tenant(tenant).prefetch_related(
        Prefetch("instances", queryset=live_instances(tenant), to_attr="live")
    )


def _page(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    error: ServiceError | None = None,
    form: str = "create",
    row: Any = None,
) -> HttpResponse:
    groups = [(group, POLICY_HELP.get(GroupPolicy(group.policy), "")) for group in _groups(tenant)]
    policies = [(value, label, POLICY_HELP[GroupPolicy(value)]) for value, label in GroupPolicy.choices]
    context = {"tenant": tenant, "role": role, "groups": groups, "policies": policies}
    return page(
        request, "compute/networks/servergroups.html", context, FORMS, error=error, form=form, row=row
    )


@login_required
@require_http_methods(["GET", "POST"])
def servergroups_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """List the tenant's server groups with their members; a POST creates one."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    if request.method == "GET":
        return _page(request, obj, role)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.server_group_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=request.POST.get("name", "").strip(),
            policy=request.POST.get("policy", "").strip(),
        ),
        lambda g: f"Created server group {g.name} ({g.policy}).",
        lambda _: redirect("ui-servergroups", tenant=obj.slug),
        lambda exc: _page(request, obj, role, exc),
    )


@login_required
@require_http_methods(["GET", "POST"])
def servergroup_delete(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """GET: the confirmation page; POST: delete a server group that no live instance belongs to."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    group = get_object_or_404(ServerGroup.objects.for_tenant(obj), pk=pk)
    require_role(role, Role.MEMBER, obj)
    groups = reverse("ui-servergroups", kwargs={"tenant": obj.slug})
    return confirm_delete(
        request,
        obj,
        what="server group",
        name=group.name,
        consequence=f"Its {group.policy} policy ends with it: no new instance can join it.",
        remedy="Delete its members first: an instance stays in the server group it was created in.",
        back=groups,
        in_use=lambda: svc.server_group_in_use(group),
        delete=lambda: svc.server_group_delete(actor=Actor.from_request(request), group=group),
        done=groups,
    )
