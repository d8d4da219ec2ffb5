"""Compute pages of the web UI (the full instance pages arrive with the UI issue)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from compute.models import Instance, InstanceState
from tenants.access import require_role, tenant_for_request
from tenants.models import Role


@login_required
@require_GET
def instance_console(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    """The VNC console (noVNC), the serial terminal (xterm.js) and the live serial log of one instance
    (members and owners)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = get_object_or_404(
        Instance.objects.for_tenant(obj).exclude(state=InstanceState.DELETED), uuid=pk
    )
    require_role(role, Role.MEMBER, obj)
    return render(request, "compute/console.html", {"tenant": obj, "instance": instance})
