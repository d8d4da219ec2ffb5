"""Staff API under /api/v1/admin/: hosts (capabilities, capacity, load, maintenance), the
admission queue, and every tenant's quota with its usage."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compute.models import Host
from compute.services.hosts import host_maintenance_set
from scheduler.engine import HostTable
from scheduler.hosts import host_rows
from security.audit import Actor
from tenants.access import require_model_permission
from tenants.api import quota_report
from tenants.models import Tenant
from tenants.services.quotas import quota_set


class StaffOnly(IsAdminUser):
    """Staff users, signed in as themselves: a tenant-bound API token never carries staff rights."""

    def has_permission(self, request: Request, view: Any) -> bool:
        from tenants.models import ApiToken

        return super().has_permission(request, view) and not isinstance(request.auth, ApiToken)


class ResourceUseSerializer(serializers.Serializer[Any]):
    capacity = serializers.FloatField(help_text="After overcommit.")
    used = serializers.FloatField(help_text="Reserved (or measured, in demand mode).")


class AdminHostSerializer(serializers.ModelSerializer[Host]):
    capacity = serializers.SerializerMethodField()
    load = serializers.SerializerMethodField(help_text="Measured CPU load over the last minute, 0..1.")

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "state",
            "simulated",
            "cpu_model",
            "cpus",
            "ram_mib",
            "disk_gib",
            "kvm_device",
            "kvm_usable",
            "kvm_probe_detail",
            "tcg_available",
            "paging",
            "iommu",
            "vmm",
            "cpu_ratio",
            "ram_ratio",
            "disk_ratio",
            "heartbeat_at",
            "capacity",
            "load",
        ]

    def _row(self, obj: Host) -> dict[str, Any]:
        rows: dict[int, dict[str, Any]] = self.context.get("rows", {})
        return rows.get(obj.pk, {})

    @extend_schema_field(serializers.DictField(child=ResourceUseSerializer()))
    def get_capacity(self, obj: Host) -> dict[str, dict[str, float]]:
        return self._row(obj).get("capacity", {})

    def get_load(self, obj: Host) -> float:
        return float(self._row(obj).get("load", 0.0))


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


class AdminHostListView(APIView):
    """Staff: every host, real and simulated, with its capabilities, capacity and load."""

    permission_classes = [StaffOnly]

    @extend_schema(responses=AdminHostSerializer(many=True))
    def get(self, request: Request) -> Response:
        hosts = list(Host.objects.order_by("simulated", "name"))
        return Response(AdminHostSerializer(hosts, many=True, context={"rows": host_figures(hosts)}).data)


class MaintenanceSerializer(serializers.Serializer[Any]):
    on = serializers.BooleanField(help_text="true: into maintenance (placement skips it); false: enabled.")


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
            actor=Actor.from_request(request), host=host, on=body.validated_data["on"]
        )
        return Response(AdminHostSerializer(host, context={"rows": host_figures([host])}).data)


class QueueItemSerializer(serializers.Serializer[Any]):
    instance = serializers.UUIDField()
    name = serializers.CharField()
    tenant = serializers.CharField()
    priority = serializers.IntegerField()
    vcpus = serializers.IntegerField()
    ram_mib = serializers.IntegerField()
    disk_gib = serializers.IntegerField()
    enqueued_at = serializers.DateTimeField()
    position = serializers.IntegerField(allow_null=True)
    waited_s = serializers.IntegerField()
    estimated_wait_s = serializers.IntegerField(allow_null=True)
    effective_priority = serializers.FloatField()
    overdue = serializers.BooleanField()
    reason = serializers.CharField()


class AdminQueueView(APIView):
    """Staff: the admission queue in admission order."""

    permission_classes = [StaffOnly]

    @extend_schema(responses=QueueItemSerializer(many=True))
    def get(self, request: Request) -> Response:
        from scheduler.admission import queue_entries, queue_statuses
        from scheduler.models import QueueEntry

        ordered = queue_entries()
        entries = {
            e.pk: e
            for e in QueueEntry.objects.unscoped()
            .filter(pk__in=[e.pk for e in ordered])
            .select_related("instance", "tenant")
        }
        statuses = queue_statuses(list(entries.values()))
        items = []
        for ranked in ordered:
            e = entries[ranked.pk]
            items.append(
                {
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
            )
        return Response(QueueItemSerializer(items, many=True).data)


class AdminQuotaSerializer(serializers.Serializer[Any]):
    tenant = serializers.CharField()
    resources = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
    max_priority = serializers.CharField()


class QuotaUpdateSerializer(serializers.Serializer[Any]):
    limits = serializers.DictField(
        child=serializers.IntegerField(min_value=0), required=False, help_text="resource -> new limit"
    )
    max_priority = serializers.ChoiceField(choices=[0, 1, 2, 3], required=False)


class AdminQuotaListView(APIView):
    """Staff: every tenant's limits and usage."""

    permission_classes = [StaffOnly]

    @extend_schema(responses=AdminQuotaSerializer(many=True))
    def get(self, request: Request) -> Response:
        rows = [{"tenant": t.slug, **quota_report(t)} for t in Tenant.objects.order_by("slug")]
        return Response(AdminQuotaSerializer(rows, many=True).data)


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
