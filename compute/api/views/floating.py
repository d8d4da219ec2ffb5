"""Floating addresses (``…/floating-ips/``) and an instance's host port forwards (``…/port-forwards/``)."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import (
    FloatingIPAssociateSerializer,
    FloatingIPCreateSerializer,
    FloatingIPSerializer,
    PortForwardCreateSerializer,
    PortForwardSerializer,
)
from compute.api.views.base import TenantView, instance_of
from compute.models import FloatingIP, PortForward
from compute.services import floating_ips as service
from core.errors import ServiceError
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.models import Role, Tenant

FLOATING_IPS = ListSpec(
    orderings={"created": ("created",), "address": ("address",)},
    default="created",
    filters=(
        Filter("address", kind="ip"),
        Filter("pool", "pool__name", help="Only addresses of this pool (its name)."),
    ),
)


def _floating_ips(tenant: Tenant) -> Any:
    return FloatingIP.objects.for_tenant(tenant).select_related("pool", "instance")


def _floating_ip(tenant: Tenant, pk: Any) -> FloatingIP:
    return get_object_or_404(_floating_ips(tenant), pk=pk)


class FloatingIPListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=FLOATING_IPS.parameters(), responses=paginated(FloatingIPSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = FLOATING_IPS.page(request, _floating_ips(self.tenant(request, tenant)))
        return page.response(FloatingIPSerializer(page.rows, many=True).data)

    @extend_schema(request=FloatingIPCreateSerializer, responses={201: FloatingIPSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = FloatingIPCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fip = service.floating_ip_allocate(
            actor=Actor.from_request(request), tenant=obj, pool=body.validated_data.get("pool") or None
        )
        return Response(FloatingIPSerializer(fip).data, status=status.HTTP_201_CREATED)


class FloatingIPDetailView(TenantView):
    @extend_schema(responses=FloatingIPSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        return Response(FloatingIPSerializer(_floating_ip(self.tenant(request, tenant), pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        fip = _floating_ip(obj, pk)
        self.require(role, Role.MEMBER, obj)
        service.floating_ip_release(actor=Actor.from_request(request), fip=fip)
        return Response(status=status.HTTP_204_NO_CONTENT)


class FloatingIPAssociateView(TenantView):
    @extend_schema(request=FloatingIPAssociateSerializer, responses=FloatingIPSerializer)
    def post(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        fip = _floating_ip(obj, pk)
        self.require(role, Role.MEMBER, obj)
        body = FloatingIPAssociateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            instance = instance_of(obj, body.validated_data["instance"])
        except Exception:  # Http404: another tenant's instance is simply unknown here
            raise ServiceError("instance", "exists", "unknown instance") from None
        fip = service.floating_ip_associate(actor=Actor.from_request(request), fip=fip, instance=instance)
        return Response(FloatingIPSerializer(_floating_ip(obj, fip.pk)).data)


class FloatingIPDisassociateView(TenantView):
    @extend_schema(request=None, responses=FloatingIPSerializer)
    def post(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        fip = _floating_ip(obj, pk)
        self.require(role, Role.MEMBER, obj)
        fip = service.floating_ip_disassociate(actor=Actor.from_request(request), fip=fip)
        return Response(FloatingIPSerializer(_floating_ip(obj, fip.pk)).data)


class PortForwardListView(TenantView):
    @extend_schema(responses=PortForwardSerializer(many=True))
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk)
        rows = (
            PortForward.objects.for_tenant(instance.tenant_id)
            .filter(instance=instance)
            .select_related("instance__host")
        )
        return Response(PortForwardSerializer(rows, many=True).data)

    @extend_schema(request=PortForwardCreateSerializer, responses={201: PortForwardSerializer})
    def post(self, request: Request, tenant: str, pk: str) -> Response:
        instance = self.instance(request, tenant, pk, Role.MEMBER)
        body = PortForwardCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        forward = service.port_forward_create(
            actor=Actor.from_request(request), instance=instance, port=body.validated_data["port"]
        )
        return Response(PortForwardSerializer(forward).data, status=status.HTTP_201_CREATED)


class PortForwardDetailView(TenantView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: str, forward: int) -> Response:
        instance, role = self._instance_and_role(request, tenant, pk, Role.VIEWER)
        row = get_object_or_404(
            PortForward.objects.for_tenant(instance.tenant_id), instance=instance, pk=forward
        )
        self.require(role, Role.MEMBER, instance.tenant)
        service.port_forward_delete(actor=Actor.from_request(request), forward=row)
        return Response(status=status.HTTP_204_NO_CONTENT)
