"""Key pairs of a tenant: list, import or generate, show, delete."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import KeyPairCreatedSerializer, KeyPairCreateSerializer, KeyPairSerializer
from compute.api.views.base import TenantView
from compute.models import KeyPair
from compute.selectors import keypairs_for
from compute.services import keypairs as keypair_service
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.models import Role, Tenant

KEYPAIRS = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(Filter("name"), Filter("key_type"), Filter("fingerprint")),
)


def _keypair(tenant: Tenant, pk: int) -> KeyPair:
    return get_object_or_404(keypairs_for(tenant), pk=pk)


class KeyPairListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=KEYPAIRS.parameters(), responses=paginated(KeyPairSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = KEYPAIRS.page(request, keypairs_for(self.tenant(request, tenant)))
        return page.response(KeyPairSerializer(page.rows, many=True).data)

    @extend_schema(
        request=KeyPairCreateSerializer,
        responses={201: KeyPairCreatedSerializer},
        description="With public_key: import it. Without: generate an Ed25519 key pair; the answer holds "
        "its private_key, once (it is not stored).",
    )
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        body = KeyPairCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        actor = Actor.from_request(request)
        if data.get("public_key") is not None:
            keypair = keypair_service.keypair_import(
                actor=actor, tenant=obj, name=data["name"], public_key=data["public_key"]
            )
            return Response(KeyPairSerializer(keypair).data, status=status.HTTP_201_CREATED)
        keypair, private_key = keypair_service.keypair_generate(actor=actor, tenant=obj, name=data["name"])
        answer = {**KeyPairSerializer(keypair).data, "private_key": private_key}
        response = Response(answer, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"  # the private key: no cache keeps it
        return response


class KeyPairDetailView(TenantView):
    @extend_schema(responses=KeyPairSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        return Response(KeyPairSerializer(_keypair(self.tenant(request, tenant), pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        keypair = _keypair(obj, pk)
        self.require(role, Role.MEMBER, obj)
        keypair_service.keypair_delete(actor=Actor.from_request(request), keypair=keypair)
        return Response(status=status.HTTP_204_NO_CONTENT)
