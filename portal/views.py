"""The web UI shell: dashboard and the API root."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from compute.models import Instance, InstanceState, Operation
from scheduler.admission import queue_statuses
from scheduler.models import QueueEntry, QueueState
from tenants.access import tenant_for_request
from tenants.models import Role
from tenants.selectors import quota_report, tenants_of_user


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Send the user to the tenant they last worked in (or their first); explain if they have none."""
    slugs = list(tenants_of_user(request.user).values_list("slug", flat=True))
    if slugs:
        last = request.session.get("tenant")
        return redirect("tenant-home", tenant=last if last in slugs else slugs[0])
    return render(request, "portal/dashboard.html", {"tenants": []})


@login_required
@require_GET
def tenant_dashboard(request: HttpRequest, tenant: str) -> HttpResponse:
    """A tenant's overview: quota bars, instances by state, recent operations, waiting requests."""

    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    request.session["tenant"] = obj.slug
    live = Instance.objects.for_tenant(obj).exclude(state=InstanceState.DELETED)
    counts = dict(live.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    waiting = list(
        QueueEntry.objects.for_tenant(obj).filter(state=QueueState.WAITING).select_related("instance")
    )
    statuses = queue_statuses(waiting)
    context = {
        "tenant": obj,
        "role": role,
        "quota": quota_report(obj),
        "counts": counts,
        "total": sum(counts.values()),
        "operations": list(
            Operation.objects.for_tenant(obj).select_related("instance").order_by("-created")[:10]
        ),
        "waiting": sorted(
            ((e.instance, statuses.get(e.instance_id, {})) for e in waiting),
            key=lambda pair: pair[1].get("position") or 0,
        ),
    }
    return render(request, "portal/tenant_dashboard.html", context)


class ApiRootView(APIView):
    """Entry point of the REST API: links to its documents and collections."""

    permission_classes = [AllowAny]

    @extend_schema(operation_id="api_root", responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response(
            {
                "name": "Nubis API",
                "version": "v1",
                "schema": reverse("api-schema", request=request),
                "docs": reverse("api-docs", request=request),
            }
        )
