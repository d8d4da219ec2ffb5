"""Tenant networks, security groups and their rules."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import (
    NetworkSerializer,
    NetworkUpdateSerializer,
    RuleCreateSerializer,
    RuleSerializer,
    SecurityGroupSerializer,
)
from compute.api.views.base import TenantView
from compute.models import (
    Network,
    SecurityGroup,
    SecurityRule,
)
from compute.selectors import networks_for
from compute.services import networks as network_service
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.models import Role, Tenant


def _network(tenant: Tenant, pk: Any) -> Network:
    return get_object_or_404(networks_for(tenant), uuid=pk)


def _security_groups(tenant: Tenant) -> Any:
    rules = Prefetch("rules", queryset=SecurityRule.objects.for_tenant(tenant))
    return SecurityGroup.objects.for_tenant(tenant).prefetch_related(rules)


def _group(tenant: Tenant, pk: Any) -> SecurityGroup:
    return get_object_or_404(_security_groups(tenant), pk=pk)


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
        page = NETWORKS.page(request, networks_for(self.tenant(request, tenant)))
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
        network = network_service.network_create(
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
        network = network_service.network_update(
            actor=Actor.from_request(request), network=network, nat_egress=body.validated_data["nat_egress"]
        )
        return Response(NetworkSerializer(network).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: str) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        network = _network(obj, pk)
        self.require(role, Role.MEMBER, obj)
        network_service.network_delete(actor=Actor.from_request(request), network=network)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SecurityGroupListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=SECURITY_GROUPS.parameters(), responses=paginated(SecurityGroupSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = SECURITY_GROUPS.page(request, _security_groups(self.tenant(request, tenant)))
        return page.response(SecurityGroupSerializer(page.rows, many=True).data)

    @extend_schema(request=SecurityGroupSerializer, responses={201: SecurityGroupSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = SecurityGroupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        group = network_service.group_create(
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
        network_service.group_delete(actor=Actor.from_request(request), group=group)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RuleListView(TenantView):
    @extend_schema(request=RuleCreateSerializer, responses={201: RuleSerializer})
    def post(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = _group(obj, pk)
        self.require(role, Role.MEMBER, obj)
        body = RuleCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        rule = network_service.rule_create(
            actor=Actor.from_request(request), group=group, **body.validated_data
        )
        return Response(RuleSerializer(rule).data, status=status.HTTP_201_CREATED)


class RuleDetailView(TenantView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int, rule: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        group = _group(obj, pk)
        found = get_object_or_404(SecurityRule.objects.for_tenant(obj), group=group, pk=rule)
        self.require(role, Role.MEMBER, obj)
        network_service.rule_delete(actor=Actor.from_request(request), rule=found)
        return Response(status=status.HTTP_204_NO_CONTENT)
