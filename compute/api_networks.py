"""API for tenant networks, security groups and an instance's groups and usage metrics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api import TenantView
from compute.models import Network, SecurityGroup, SecurityRule, UsageSample
from compute.services import networks as svc
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.models import Role, Tenant


class NetworkSerializer(serializers.ModelSerializer[Network]):
    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = Network
        fields = ["id", "name", "cidr", "gateway", "nat_egress", "created"]
        read_only_fields = ["gateway", "created"]


class NetworkUpdateSerializer(serializers.Serializer[Any]):
    nat_egress = serializers.BooleanField()


class RuleSerializer(serializers.ModelSerializer[SecurityRule]):
    class Meta:
        model = SecurityRule
        fields = ["id", "protocol", "port_min", "port_max", "cidr", "created"]
        read_only_fields = ["created"]


class RuleCreateSerializer(serializers.Serializer[Any]):
    protocol = serializers.CharField(help_text="tcp, udp, icmp or any.")
    cidr = serializers.CharField(help_text="Source addresses, as 10.0.0.0/24 (0.0.0.0/0 for anywhere).")
    port_min = serializers.IntegerField(required=False, allow_null=True)
    port_max = serializers.IntegerField(required=False, allow_null=True)


class SecurityGroupSerializer(serializers.ModelSerializer[SecurityGroup]):
    rules = serializers.SerializerMethodField()

    class Meta:
        model = SecurityGroup
        fields = ["id", "name", "description", "rules", "created"]
        read_only_fields = ["created"]

    @extend_schema_field(RuleSerializer(many=True))
    def get_rules(self, obj: SecurityGroup) -> list[dict[str, Any]]:
        cache = getattr(obj, "_prefetched_objects_cache", {})
        # Prefetched in lists: use it even when empty (a group without rules), or each costs a query.
        if "rules" in cache:
            rules = cache["rules"]
        else:
            rules = SecurityRule.objects.for_tenant(obj.tenant_id).filter(group=obj)
        return list(RuleSerializer(rules, many=True).data)


class GroupsSerializer(serializers.Serializer[Any]):
    security_groups = serializers.ListField(child=serializers.CharField(), help_text="Names or ids.")


class SampleSerializer(serializers.ModelSerializer[UsageSample]):
    class Meta:
        model = UsageSample
        fields = [
            "at",
            "resolution",
            "cpu_pct",
            "mem_bytes",
            "mem_peak_bytes",
            "pids",
            "blk_read_bps",
            "blk_write_bps",
            "net_rx_bps",
            "net_tx_bps",
        ]


def _network(tenant: Tenant, pk: Any) -> Network:
    return get_object_or_404(svc.networks_for(tenant), uuid=pk)


def _groups(tenant: Tenant) -> Any:
    rules = Prefetch("rules", queryset=SecurityRule.objects.for_tenant(tenant))
    return SecurityGroup.objects.for_tenant(tenant).prefetch_related(rules)


def _group(tenant: Tenant, pk: Any) -> SecurityGroup:
    return get_object_or_404(_groups(tenant), pk=pk)


NETWORKS = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(Filter("name"), Filter("nat_egress", kind="bool", help="Only networks with (or without) NAT.")),
)
SECURITY_GROUPS = ListSpec(
    orderings={"name": ("name",), "created": ("created",)}, default="name", filters=(Filter("name"),)
)


class NetworkListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=NETWORKS.parameters(), responses=paginated(NetworkSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = NETWORKS.page(request, svc.networks_for(self.tenant(request, tenant)))
        return page.response(NetworkSerializer(page.rows, many=True).data)

    @extend_schema(request=NetworkSerializer, responses={201: NetworkSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        data = request.data if isinstance(request.data, dict) else {}
        for field in ("name", "cidr"):
            if not isinstance(data.get(field), str):
                raise serializers.ValidationError({field: ["This field is required (a string)."]})
        nat = data.get("nat_egress", False)
        if not isinstance(nat, bool):
            raise serializers.ValidationError({"nat_egress": ["Must be true or false."]})
        network = svc.network_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=data["name"],
            cidr=data["cidr"],
            nat_egress=nat,
        )
        return Response(NetworkSerializer(network).data, status=status.HTTP_201_CREATED)


class NetworkDetailView(TenantView):
    @extend_schema(responses=NetworkSerializer)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        return Response(NetworkSerializer(_network(self.tenant(request, tenant), pk)).data)

    @extend_schema(request=NetworkUpdateSerializer, responses=NetworkSerializer)
    def patch(self, request: Request, tenant: str, pk: str) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        network = _network(obj, pk)
        self.require(role, Role.MEMBER, obj)
        body = NetworkUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        network = svc.network_update(
            actor=Actor.from_request(request), network=network, nat_egress=body.validated_data["nat_egress"]
        )
        return Response(NetworkSerializer(network).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: str) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        network = _network(obj, pk)
        self.require(role, Role.MEMBER, obj)
        svc.network_delete(actor=Actor.from_request(request), network=network)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SecurityGroupListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=SECURITY_GROUPS.parameters(), responses=paginated(SecurityGroupSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = SECURITY_GROUPS.page(request, _groups(self.tenant(request, tenant)))
        return page.response(SecurityGroupSerializer(page.rows, many=True).data)

    @extend_schema(request=SecurityGroupSerializer, responses={201: SecurityGroupSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = SecurityGroupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        group = svc.group_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=body.validated_data["name"],
            description=body.validated_data.get("description", ""),
        )
        return Response(SecurityGroupSerializer(group).data, status=status.HTTP_201_CREATED)


class SecurityGroupDetailView(TenantView):
    @extend_schema(responses=SecurityGroupSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        return Response(SecurityGroupSerializer(_group(self.tenant(request, tenant), pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = _group(obj, pk)
        self.require(role, Role.MEMBER, obj)
        svc.group_delete(actor=Actor.from_request(request), group=group)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RuleListView(TenantView):
    @extend_schema(request=RuleCreateSerializer, responses={201: RuleSerializer})
    def post(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = _group(obj, pk)
        self.require(role, Role.MEMBER, obj)
        body = RuleCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        rule = svc.rule_create(actor=Actor.from_request(request), group=group, **body.validated_data)
        return Response(RuleSerializer(rule).data, status=status.HTTP_201_CREATED)


class RuleDetailView(TenantView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int, rule: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = _group(obj, pk)
        found = get_object_or_404(SecurityRule.objects.for_tenant(obj), group=group, pk=rule)
        self.require(role, Role.MEMBER, obj)
        svc.rule_delete(actor=Actor.from_request(request), rule=found)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InstanceGroupsView(TenantView):
    """Replace the security groups of an instance on a tenant network."""

    @extend_schema(request=GroupsSerializer, responses=GroupsSerializer)
    def put(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = GroupsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        groups = [svc.group_by_ref(instance.tenant, ref) for ref in body.validated_data["security_groups"]]
        svc.instance_groups_set(actor=Actor.from_request(request), instance=instance, groups=groups)
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
        from scheduler.models import PlacementDecision

        instance = self.instance(request, tenant, pk)
        decision = get_object_or_404(
            PlacementDecision.objects.for_tenant(instance.tenant_id), instance=instance
        )
        return Response({**decision.record, "decided": decision.created})
