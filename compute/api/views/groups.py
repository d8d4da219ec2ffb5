"""Server groups, and the tenant's place in the admission queue."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import InstanceSerializer, ServerGroupSerializer
from compute.api.views.base import TenantView
from compute.models import (
    GroupPolicy,
    Instance,
    InstanceKind,
    InstanceState,
    ServerGroup,
)
from compute.selectors import instance_rows, queue_context
from compute.services import server_groups as group_service
from core.pagination import Filter, ListSchema, ListSpec, paginated
from scheduler.models import QueueState
from security.audit import Actor
from tenants.models import Role, Tenant


def _server_groups(tenant: Tenant) -> Any:
    live = Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED).order_by("name")
    return ServerGroup.objects.for_tenant(tenant).prefetch_related(
        Prefetch("instances", queryset=live, to_attr="live_members")
    )


SERVER_GROUPS = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(Filter("name"), Filter("policy", choices=GroupPolicy.values)),
)


# The queue's own order (priority with aging, fair shares) moves as time passes, so pages follow
# the order of arrival, which does not; each row carries its current place in `queue.position`.
QUEUE = ListSpec(
    orderings={"enqueued": ("queue_entry__enqueued_at",), "name": ("name",)},
    default="enqueued",
    filters=(Filter("kind", choices=InstanceKind.values), Filter("name")),
)


class ServerGroupListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=SERVER_GROUPS.parameters(), responses=paginated(ServerGroupSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = SERVER_GROUPS.page(request, _server_groups(self.tenant(request, tenant)))
        return page.response(ServerGroupSerializer(page.rows, many=True).data)

    @extend_schema(request=ServerGroupSerializer, responses={201: ServerGroupSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = ServerGroupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        group = group_service.server_group_create(
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
        return Response(ServerGroupSerializer(get_object_or_404(_server_groups(obj), pk=pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = get_object_or_404(_server_groups(obj), pk=pk)
        self.require(role, Role.MEMBER, obj)
        group_service.server_group_delete(actor=Actor.from_request(request), group=group)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantQueueView(TenantView):
    """The tenant's instances waiting for capacity, oldest first, each with its place and estimate."""

    schema = ListSchema()

    @extend_schema(parameters=QUEUE.parameters(), responses=paginated(InstanceSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        page = QUEUE.page(request, instance_rows(obj).filter(queue_entry__state=QueueState.WAITING))
        return page.response(InstanceSerializer(page.rows, many=True, context=queue_context(obj)).data)
