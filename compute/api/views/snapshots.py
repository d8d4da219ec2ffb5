"""Snapshots of an instance, and all of a tenant's."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import OperationSerializer, SnapshotCreateSerializer, SnapshotSerializer
from compute.api.views.base import TenantView, accepted
from compute.models import (
    InstanceState,
    Snapshot,
)
from compute.services import snapshots
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.models import Role

SNAPSHOTS = ListSpec(
    orderings={"created": ("created",), "name": ("name",)}, default="created", filters=(Filter("name"),)
)


class SnapshotListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=SNAPSHOTS.parameters(), responses=paginated(SnapshotSerializer))
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk)
        rows = Snapshot.objects.for_tenant(instance.tenant_id).filter(instance=instance)
        page = SNAPSHOTS.page(request, rows.select_related("instance"))
        return page.response(SnapshotSerializer(page.rows, many=True).data)

    @extend_schema(request=SnapshotCreateSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = SnapshotCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return accepted(
            snapshots.snapshot_create(
                actor=Actor.from_request(request), instance=instance, name=body.validated_data["name"]
            )
        )


TENANT_SNAPSHOTS = ListSpec(
    orderings={"created": ("created",), "name": ("name",)},
    default="created",
    filters=(Filter("name"), Filter("instance", path="instance__uuid", kind="uuid")),
)


class TenantSnapshotListView(TenantView):
    """Every snapshot of the tenant's instances (the web UI's snapshots page)."""

    schema = ListSchema()

    @extend_schema(parameters=TENANT_SNAPSHOTS.parameters(), responses=paginated(SnapshotSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        rows = Snapshot.objects.for_tenant(obj).exclude(instance__state=InstanceState.DELETED)
        page = TENANT_SNAPSHOTS.page(request, rows.select_related("instance"))
        return page.response(SnapshotSerializer(page.rows, many=True).data)


class SnapshotDetailView(TenantView):
    @extend_schema(responses=SnapshotSerializer)
    def get(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        return Response(SnapshotSerializer(self.snapshot(request, tenant, pk, snapshot)).data)

    @extend_schema(responses={202: OperationSerializer})
    def delete(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        snap = self.snapshot(request, tenant, pk, snapshot, Role.MEMBER)
        return accepted(snapshots.snapshot_delete(actor=Actor.from_request(request), snapshot=snap))


class SnapshotRevertView(TenantView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        snap = self.snapshot(request, tenant, pk, snapshot, Role.MEMBER)
        return accepted(snapshots.snapshot_revert(actor=Actor.from_request(request), snapshot=snap))
