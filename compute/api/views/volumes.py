"""Persistent volumes of a tenant, and their snapshots."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import (
    OperationSerializer,
    VolumeAttachSerializer,
    VolumeCreateSerializer,
    VolumeResizeSerializer,
    VolumeSerializer,
    VolumeSnapshotCreateSerializer,
    VolumeSnapshotSerializer,
)
from compute.api.views.base import TenantView, accepted
from compute.models import Volume, VolumeSnapshot, VolumeState
from compute.services import host_rpc
from compute.services import volumes as service
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.access import require_role
from tenants.models import Role

VOLUMES = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(
        Filter("name"),
        Filter("state", choices=VolumeState.values),
        Filter("instance", path="instance__uuid", kind="uuid"),
    ),
)
VOLUME_SNAPSHOTS = ListSpec(
    orderings={"created": ("created",), "name": ("name",)}, default="created", filters=(Filter("name"),)
)
# The file work answers once the host's agent did it (host_rpc): a 503 names the host when it
# does not answer, a 409 carries its refusal.
HOST_AGENT = {host_rpc.SCHEMA_EXTENSION: True}


def _rows(tenant: Any) -> Any:
    return service.volumes_live(tenant).select_related("instance", "host", "source_image")


class VolumeView(TenantView):
    def volume(self, request: Request, slug: str, pk: Any, need: Role = Role.VIEWER) -> Volume:
        """The tenant's live volume: 404 for anything not the tenant's, then 403 if the role is too low."""
        tenant, role = self.tenant_and_role(request, slug)
        volume = get_object_or_404(_rows(tenant), uuid=pk)
        require_role(role, need, tenant)
        return volume


class VolumeListView(VolumeView):
    schema = ListSchema()

    @extend_schema(parameters=VOLUMES.parameters(), responses=paginated(VolumeSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = VOLUMES.page(request, _rows(self.tenant(request, tenant)))
        return page.response(VolumeSerializer(page.rows, many=True).data)

    @extend_schema(request=VolumeCreateSerializer, responses={201: VolumeSerializer}, extensions=HOST_AGENT)
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = VolumeCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        volume = service.volume_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=data["name"],
            size_gib=data.get("size_gib"),
            snapshot=data.get("snapshot"),
            image=data.get("image"),
        )
        return Response(VolumeSerializer(volume).data, status=status.HTTP_201_CREATED)


class VolumeDetailView(VolumeView):
    @extend_schema(responses=VolumeSerializer)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        return Response(VolumeSerializer(self.volume(request, tenant, pk)).data)

    @extend_schema(responses={204: None}, extensions=HOST_AGENT)
    def delete(self, request: Request, tenant: str, pk: str) -> Response:
        volume = self.volume(request, tenant, pk, Role.MEMBER)
        service.volume_delete(actor=Actor.from_request(request), volume=volume)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VolumeAttachView(VolumeView):
    @extend_schema(request=VolumeAttachSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        volume = self.volume(request, tenant, pk, Role.MEMBER)
        body = VolumeAttachSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return accepted(
            service.volume_attach(
                actor=Actor.from_request(request), volume=volume, instance=body.validated_data["instance"]
            )
        )


class VolumeDetachView(VolumeView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        volume = self.volume(request, tenant, pk, Role.MEMBER)
        return accepted(service.volume_detach(actor=Actor.from_request(request), volume=volume))


class VolumeResizeView(VolumeView):
    @extend_schema(request=VolumeResizeSerializer, responses=VolumeSerializer, extensions=HOST_AGENT)
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        volume = self.volume(request, tenant, pk, Role.MEMBER)
        body = VolumeResizeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        done = service.volume_resize(
            actor=Actor.from_request(request), volume=volume, size_gib=body.validated_data["size_gib"]
        )
        return Response(VolumeSerializer(done).data)


class VolumeSnapshotListView(VolumeView):
    schema = ListSchema()

    @extend_schema(parameters=VOLUME_SNAPSHOTS.parameters(), responses=paginated(VolumeSnapshotSerializer))
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        volume = self.volume(request, tenant, pk)
        rows = (
            VolumeSnapshot.objects.for_tenant(volume.tenant_id).filter(volume=volume).select_related("volume")
        )
        page = VOLUME_SNAPSHOTS.page(request, rows)
        return page.response(VolumeSnapshotSerializer(page.rows, many=True).data)

    @extend_schema(
        request=VolumeSnapshotCreateSerializer,
        responses={201: VolumeSnapshotSerializer},
        extensions=HOST_AGENT,
    )
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        volume = self.volume(request, tenant, pk, Role.MEMBER)
        body = VolumeSnapshotCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        snapshot = service.volume_snapshot_create(
            actor=Actor.from_request(request), volume=volume, name=body.validated_data["name"]
        )
        return Response(VolumeSnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)


class VolumeSnapshotDetailView(VolumeView):
    @extend_schema(responses=VolumeSnapshotSerializer)
    def get(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        return Response(VolumeSnapshotSerializer(self._snapshot(request, tenant, pk, snapshot)).data)

    @extend_schema(responses={204: None}, extensions=HOST_AGENT)
    def delete(self, request: Request, tenant: str, pk: str, snapshot: int) -> Response:
        snap = self._snapshot(request, tenant, pk, snapshot, Role.MEMBER)
        service.volume_snapshot_delete(actor=Actor.from_request(request), snapshot=snap)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _snapshot(
        self, request: Request, tenant: str, pk: str, snapshot: int, need: Role = Role.VIEWER
    ) -> VolumeSnapshot:
        volume = self.volume(request, tenant, pk)
        snap = get_object_or_404(
            VolumeSnapshot.objects.for_tenant(volume.tenant_id).select_related("volume"),
            volume=volume,
            pk=snapshot,
        )
        _, role = self.tenant_and_role(request, tenant)
        require_role(role, need, volume.tenant)
        return snap
