"""The staff API of compute and the scheduler: hosts, maintenance, the admission queue and quotas."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compute.api.serializers import (
    AdminHostSerializer,
    AdminQuotaSerializer,
    MaintenanceSerializer,
    QueueItemSerializer,
    QuotaUpdateSerializer,
)
from compute.models import (
    Host,
    HostState,
)
from compute.services.hosts import host_maintenance_set
from core.pagination import Filter, ListSchema, ListSpec, paginated
from scheduler.admission import queue_statuses
from scheduler.engine import HostTable
from scheduler.hosts import host_rows
from scheduler.models import QueueEntry, QueueState
from security.audit import Actor
from tenants.access import require_model_permission
from tenants.models import ApiToken, Tenant
from tenants.selectors import quota_report
from tenants.services.quotas import quota_reports, quota_set


class StaffOnly(IsAdminUser):
    """Staff users, signed in as themselves: a tenant-bound API token never carries staff rights."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and not isinstance(request.auth, ApiToken)


def host_figures(hosts: list[Host]) -> dict[int, dict[str, Any]]:
    """Capacity after overcommit, what is used and the load of each host, from the scheduler's table."""
    table = HostTable(host_rows(Host.objects.filter(pk__in=[h.pk for h in hosts])))
    figures = {}
    for i, host_id in enumerate(table.ids):
        figures[int(host_id)] = {
            "capacity": {
                name: {"capacity": float(table.capacity[r, i]), "used": float(table.used[r, i])}
                for r, name in enumerate(("vcpus", "ram_mib", "disk_gib"))
            },
            "load": float(table.load[i]),
        }
    return figures


HOSTS = ListSpec(
    orderings={"name": ("name",), "registered": ("registered_at",)},
    default="name",
    filters=(Filter("state", choices=HostState.values), Filter("simulated", kind="bool")),
)


class AdminHostListView(APIView):
    """Staff: every host, real and simulated, with its capabilities, capacity and load."""

    permission_classes = [StaffOnly]
    schema = ListSchema()

    @extend_schema(parameters=HOSTS.parameters(), responses=paginated(AdminHostSerializer))
    def get(self, request: Request) -> Response:
        page = HOSTS.page(request, Host.objects.all())
        context = {"rows": host_figures(page.rows)}
        return page.response(AdminHostSerializer(page.rows, many=True, context=context).data)


class AdminHostMaintenanceView(APIView):
    """Staff with the permission to change hosts: put a host into maintenance or take it out."""

    permission_classes = [StaffOnly]

    @extend_schema(request=MaintenanceSerializer, responses=AdminHostSerializer)
    def post(self, request: Request, pk: int) -> Response:
        host = get_object_or_404(Host, pk=pk)
        require_model_permission(request, "compute.change_host")
        body = MaintenanceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        host = host_maintenance_set(
            actor=Actor.from_request(request),
            host=host,
            on=body.validated_data["on"],
            force=body.validated_data["force"],
        )
        return Response(AdminHostSerializer(host, context={"rows": host_figures([host])}).data)


# The admission order moves as requests age, so pages follow arrival; each row carries its place.
ADMIN_QUEUE = ListSpec(
    orderings={"enqueued": ("enqueued_at",)},
    default="enqueued",
    filters=(Filter("tenant", path="tenant__slug"),),
)


class AdminQueueView(APIView):
    """Staff: the requests waiting for capacity, by arrival, each with its place in admission order."""

    permission_classes = [StaffOnly]
    schema = ListSchema()

    @extend_schema(parameters=ADMIN_QUEUE.parameters(), responses=paginated(QueueItemSerializer))
    def get(self, request: Request) -> Response:
        waiting = (
            QueueEntry.objects.unscoped()
            .filter(state=QueueState.WAITING)
            .select_related("instance", "tenant")
        )
        page = ADMIN_QUEUE.page(request, waiting)
        statuses = queue_statuses(page.rows)
        items = [
            {
                "id": e.pk,
                "instance": e.instance.uuid,
                "name": e.instance.name,
                "tenant": e.tenant.slug,
                "priority": e.priority,
                "vcpus": e.vcpus,
                "ram_mib": e.ram_mib,
                "disk_gib": e.disk_gib,
                "enqueued_at": e.enqueued_at,
                **{k: v for k, v in statuses.get(e.instance_id, {}).items() if k != "waiting"},
            }
            for e in page.rows
        ]
        return page.response(QueueItemSerializer(items, many=True).data)


QUOTAS = ListSpec(orderings={"tenant": ("slug",)}, default="tenant", filters=(Filter("tenant", path="slug"),))


class AdminQuotaListView(APIView):
    """Staff: every tenant's limits and usage."""

    permission_classes = [StaffOnly]
    schema = ListSchema()

    @extend_schema(parameters=QUOTAS.parameters(), responses=paginated(AdminQuotaSerializer))
    def get(self, request: Request) -> Response:
        page = QUOTAS.page(request, Tenant.objects.all())
        reports = quota_reports(page.rows)
        rows = [{"tenant": t.slug, **reports[t.pk]} for t in page.rows]
        return page.response(AdminQuotaSerializer(rows, many=True).data)


class AdminQuotaView(APIView):
    """Staff: one tenant's limits and usage; staff allowed to change quotas set new limits."""

    permission_classes = [StaffOnly]

    @extend_schema(responses=AdminQuotaSerializer)
    def get(self, request: Request, tenant: str) -> Response:
        obj = get_object_or_404(Tenant, slug=tenant)
        return Response(AdminQuotaSerializer({"tenant": obj.slug, **quota_report(obj)}).data)

    @extend_schema(request=QuotaUpdateSerializer, responses=AdminQuotaSerializer)
    def patch(self, request: Request, tenant: str) -> Response:
        obj = get_object_or_404(Tenant, slug=tenant)
        require_model_permission(request, "tenants.change_quota")
        body = QuotaUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        quota_set(
            actor=Actor.from_request(request),
            tenant=obj,
            limits=body.validated_data.get("limits", {}),
            max_priority=body.validated_data.get("max_priority"),
        )
        return Response(AdminQuotaSerializer({"tenant": obj.slug, **quota_report(obj)}).data)
