"""API for server groups and the tenant's view of the admission queue."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api import InstanceSerializer, TenantView
from compute.models import GroupPolicy, Instance, InstanceState, ServerGroup
from compute.services import server_groups as svc
from security.audit import Actor
from tenants.models import Role, Tenant


class ServerGroupSerializer(serializers.ModelSerializer[ServerGroup]):
    policy = serializers.ChoiceField(choices=GroupPolicy.choices)
    members = serializers.SerializerMethodField(help_text="Names of its live instances.")

    class Meta:
        model = ServerGroup
        fields = ["id", "name", "policy", "members", "created"]
        read_only_fields = ["created"]
        # The service answers a taken name with 409; the serializer must not turn it into a 400.
        validators: list[Any] = []

    def get_members(self, obj: ServerGroup) -> list[str]:
        return [i.name for i in getattr(obj, "live_members", [])]


def _groups(tenant: Tenant) -> Any:
    live = Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED).order_by("name")
    return ServerGroup.objects.for_tenant(tenant).prefetch_related(
        Prefetch("instances", queryset=live, to_attr="live_members")
    )


class ServerGroupListView(TenantView):
    @extend_schema(responses=ServerGroupSerializer(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        return Response(ServerGroupSerializer(_groups(self.tenant(request, tenant)), many=True).data)

    @extend_schema(request=ServerGroupSerializer, responses={201: ServerGroupSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = ServerGroupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        group = svc.server_group_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=body.validated_data["name"],
            policy=body.validated_data["policy"],
        )
        return Response(ServerGroupSerializer(group).data, status=status.HTTP_201_CREATED)


class ServerGroupDetailView(TenantView):
    @extend_schema(responses=ServerGroupSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        obj = self.tenant(request, tenant)
        return Response(ServerGroupSerializer(get_object_or_404(_groups(obj), pk=pk)).data)

    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = get_object_or_404(_groups(obj), pk=pk)
        self.require(role, Role.MEMBER, obj)
        svc.server_group_delete(actor=Actor.from_request(request), group=group)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantQueueView(TenantView):
    """The tenant's instances waiting for capacity, in queue order, each with its place and estimate."""

    @extend_schema(responses=InstanceSerializer(many=True))
    def get(self, request: Request, tenant: str) -> Response:
        from scheduler.admission import queue_statuses
        from scheduler.models import QueueEntry, QueueState

        obj = self.tenant(request, tenant)
        entries = list(
            QueueEntry.objects.for_tenant(obj).filter(state=QueueState.WAITING).select_related("instance")
        )
        statuses = queue_statuses(entries)
        instances = sorted(
            (e.instance for e in entries), key=lambda i: statuses[i.pk]["position"] or len(statuses) + 1
        )
        return Response(InstanceSerializer(instances, many=True, context={"queue": statuses}).data)
