"""Instances: list, create, show, delete, power actions, resize, security groups, metrics and placement."""

from __future__ import annotations

from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import (
    GroupsSerializer,
    InstanceCreateSerializer,
    InstanceDetailSerializer,
    InstanceSerializer,
    MigrateSerializer,
    OperationSerializer,
    ResizeSerializer,
    SampleSerializer,
)
from compute.api.views.base import TenantView, accepted, instance_of
from compute.models import (
    InstanceKind,
    InstanceState,
)
from compute.selectors import instance_rows, queue_context
from compute.services import instances as instance_service
from compute.services import migration, resize
from compute.services import networks as network_service
from core.pagination import Filter, ListSchema, ListSpec, paginated
from scheduler.models import PlacementDecision
from security.audit import Actor
from tenants.access import require_model_permission
from tenants.models import PriorityClass, Role, Tenant

INSTANCES = ListSpec(
    orderings={"created": ("created",), "name": ("name",), "state": ("state",), "kind": ("kind",)},
    default="-created",
    filters=(
        Filter("state", choices=InstanceState.values),
        Filter("kind", choices=InstanceKind.values),
        Filter("name"),
        Filter("network", "network__name", help="Only instances on this network (its name)"),
        Filter("server_group", "server_group__name", help="Only members of this server group (its name)"),
    ),
)


class InstanceListView(TenantView):
    schema = ListSchema()
    # A create with an Idempotency-Key is de-duplicated per tenant in the database (instance_create):
    # portal.idempotency lets it run while Redis, which keeps the replayed answers, is unavailable.
    idempotent_in_database = True

    @extend_schema(parameters=INSTANCES.parameters(), responses=paginated(InstanceSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        page = INSTANCES.page(request, instance_rows(obj))
        return page.response(InstanceSerializer(page.rows, many=True, context=queue_context(obj)).data)

    @extend_schema(request=InstanceCreateSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = InstanceCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        operation = instance_service.instance_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=data["name"],
            flavor=data["flavor"],
            image=data["image"],
            kind=data["kind"],
            priority=int(PriorityClass[data["priority"].upper()]),
            idempotency_key=request.headers.get("Idempotency-Key") or None,
            network=data.get("network", instance_service.DEFAULT_NETWORK),
            security_groups=data.get("security_groups"),
            allocation=data.get("allocation"),
            server_group=data.get("server_group"),
            wait=data["wait"],
            ha=data.get("ha"),
            key_pairs=data.get("key_pairs"),
            user_data=data.get("user_data", ""),
        )
        response = accepted(operation)
        if instance_service.create_replayed(operation):
            # The tenant made it already with this key: its operation as it stands now, as a replay.
            response["Idempotent-Replayed"] = "true"
        return response


class InstanceDetailView(TenantView):
    @extend_schema(responses=InstanceDetailSerializer)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance, role = self._instance_and_role(request, tenant, pk, Role.VIEWER)
        # The user-data is shown back to those who may create instances, not to viewers.
        context = {"user_data": role.at_least(Role.MEMBER)}
        return Response(InstanceDetailSerializer(instance, context=context).data)

    @extend_schema(responses={202: OperationSerializer})
    def delete(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        return accepted(
            instance_service.instance_delete(actor=Actor.from_request(request), instance=instance)
        )


def _action_view(kind: str) -> type[TenantView]:
    class ActionView(TenantView):
        @extend_schema(request=None, responses={202: OperationSerializer}, operation_id=f"instance_{kind}")
        def post(self, request: Request, tenant: str, pk: str) -> Response:
            instance = self.instance(request, tenant, pk, Role.MEMBER)
            return accepted(
                instance_service.instance_action(
                    actor=Actor.from_request(request), instance=instance, kind=kind
                )
            )

    ActionView.__name__ = f"Instance{kind.capitalize()}View"
    ActionView.__doc__ = f"{kind.capitalize()} the instance (asynchronous: answers 202 with the Operation)."
    return ActionView


InstanceStartView = _action_view("start")


InstanceStopView = _action_view("stop")


InstanceRebootView = _action_view("reboot")


class InstanceResizeView(TenantView):
    """Online: move memory through the balloon. Offline (stopped): change vCPUs and RAM."""

    @extend_schema(request=ResizeSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = ResizeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actor = Actor.from_request(request)
        data = body.validated_data
        if "memory_mib" in data:
            return accepted(
                resize.instance_set_memory(actor=actor, instance=instance, memory_mib=data["memory_mib"])
            )
        return accepted(
            resize.instance_resize(
                actor=actor, instance=instance, vcpus=data["vcpus"], ram_mib=data["ram_mib"]
            )
        )


class InstanceMigrateView(TenantView):
    """Staff: move the instance to another host (a VM live, a container cold), to the named host
    or where placement chooses with every filter. Asynchronous: answers 202 with the Operation."""

    @extend_schema(request=MigrateSerializer, responses={202: OperationSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        if not (request.user.is_authenticated and request.user.is_staff):
            self.instance(request, tenant, pk, Role.OWNER)  # 404 if not the tenant's, 403 below owner
            raise PermissionDenied("only staff move instances between hosts")
        require_model_permission(request, "compute.change_host")
        instance = instance_of(get_object_or_404(Tenant, slug=tenant), pk)
        body = MigrateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return accepted(
            migration.instance_migrate(
                actor=Actor.from_request(request),
                instance=instance,
                target=body.validated_data["host"],
                timeout=body.validated_data.get("timeout"),
                bandwidth_mib=body.validated_data.get("bandwidth_mib"),
            )
        )


class InstanceGroupsView(TenantView):
    """Replace the security groups of an instance on a tenant network."""

    @extend_schema(request=GroupsSerializer, responses=GroupsSerializer)
    def put(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = GroupsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        groups = [
            network_service.group_by_ref(instance.tenant, ref)
            for ref in body.validated_data["security_groups"]
        ]
        network_service.instance_groups_set(
            actor=Actor.from_request(request), instance=instance, groups=groups
        )
        return Response({"security_groups": [g.name for g in groups]})


class InstanceMetricsView(TenantView):
    """The instance's usage time series (finest resolution that covers the period)."""

    @extend_schema(
        parameters=[OpenApiParameter("seconds", int, description="How far back (60-2592000, default 900).")],
        responses=SampleSerializer(many=True),
    )
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        from compute.metrics import series

        instance = self.instance(request, tenant, pk)
        # Up to an hour back the points are the 10 s samples; further back, minute or hour means.
        raw = request.query_params.get("seconds", "900")
        if not raw.isdigit() or not 60 <= int(raw) <= 30 * 86400:
            raise serializers.ValidationError({"seconds": ["must be a whole number from 60 to 2592000"]})
        points = series(instance=instance, since=timezone.now() - timedelta(seconds=int(raw)))
        return Response(points)


class PlacementView(TenantView):
    """Why the instance is on its host, or why no host could take it: the scheduler's record."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk)
        decision = get_object_or_404(
            PlacementDecision.objects.for_tenant(instance.tenant_id), instance=instance
        )
        return Response({**decision.record, "decided": decision.created})
