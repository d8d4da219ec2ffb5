"""Views of the tenants API: tenants, quota and usage, members, tokens and the audit trail."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from security.models import AuditRecord, Outcome, Source
from tenants.access import tenant_for_request, tenants_for_request
from tenants.api.serializers import (
    AuditRecordSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    MemberSerializer,
    QuotaSerializer,
    TenantCreateSerializer,
    TenantSerializer,
    TokenCreatedSerializer,
    TokenCreateSerializer,
    TokenSerializer,
)
from tenants.models import Membership, Role, Tenant
from tenants.selectors import quota_report, visible_tokens
from tenants.services import members as member_services
from tenants.services import tokens as token_services

_TENANT_ORDERINGS = {"name": ("name",), "slug": ("slug",), "created": ("created",)}


TENANTS = ListSpec(orderings=_TENANT_ORDERINGS, default="name", filters=(Filter("slug"), Filter("name")))


ADMIN_TENANTS = ListSpec(
    orderings=_TENANT_ORDERINGS,
    default="name",
    filters=(Filter("slug"), Filter("name"), Filter("active", kind="bool", help="Only (in)active tenants.")),
)


MEMBERS = ListSpec(
    orderings={"username": ("user__username",), "created": ("created",), "role": ("role",)},
    default="username",
    filters=(Filter("role", choices=Role.values), Filter("username", "user__username")),
)


TOKENS = ListSpec(
    orderings={"created": ("created",), "name": ("name",)},
    default="-created",
    filters=(Filter("role", choices=Role.values), Filter("name")),
)


AUDIT = ListSpec(
    orderings={"seq": ("seq",), "at": ("at",)},
    default="-seq",
    filters=(
        Filter("action"),
        Filter("outcome", choices=Outcome.values),
        Filter("source", choices=Source.values),
        Filter("target_type"),
        Filter("target_id"),
        Filter("actor_name"),
    ),
)


class TenantListView(APIView):
    """The tenants the caller belongs to, with the caller's role in each."""

    permission_classes = [IsAuthenticated]
    schema = ListSchema()

    @extend_schema(parameters=TENANTS.parameters(), responses=paginated(TenantSerializer))
    def get(self, request: Request) -> Response:
        # Who may see what is decided in one place (tenants_for_request); a user's tenants are few.
        roles = {tenant.pk: str(role) for tenant, role in tenants_for_request(request)}
        page = TENANTS.page(request, Tenant.objects.filter(pk__in=list(roles)))
        return page.response(TenantSerializer(page.rows, many=True, context={"roles": roles}).data)


class TenantDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses=TenantSerializer)
    def get(self, request: Request, tenant: str) -> Response:
        obj, role = tenant_for_request(request, tenant, Role.VIEWER)
        return Response(TenantSerializer(obj, context={"roles": {obj.pk: str(role)}}).data)


class QuotaView(APIView):
    """The tenant's limits and current usage (the sum of its active claims)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=QuotaSerializer)
    def get(self, request: Request, tenant: str) -> Response:
        obj, _ = tenant_for_request(request, tenant, Role.VIEWER)
        return Response(quota_report(obj))


class MemberListView(APIView):
    permission_classes = [IsAuthenticated]
    schema = ListSchema()

    @extend_schema(parameters=MEMBERS.parameters(), responses=paginated(MemberSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj, _ = tenant_for_request(request, tenant, Role.VIEWER)
        page = MEMBERS.page(request, Membership.objects.filter(tenant=obj).select_related("user"))
        return page.response(MemberSerializer(page.rows, many=True).data)

    @extend_schema(request=MemberAddSerializer, responses={201: MemberSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj, _ = tenant_for_request(request, tenant, Role.OWNER)
        body = MemberAddSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = member_services.membership_add(
            actor=Actor.from_request(request),
            tenant=obj,
            username=body.validated_data["username"],
            role=body.validated_data["role"],
        )
        return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    permission_classes = [IsAuthenticated]

    def _membership(self, request: Request, tenant: str, pk: int, need: Role) -> Membership:
        obj, _ = tenant_for_request(request, tenant, need)
        return get_object_or_404(Membership.objects.select_related("user", "tenant"), tenant=obj, pk=pk)

    @extend_schema(responses=MemberSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        return Response(MemberSerializer(self._membership(request, tenant, pk, Role.VIEWER)).data)

    @extend_schema(request=MemberRoleSerializer, responses=MemberSerializer)
    def patch(self, request: Request, tenant: str, pk: int) -> Response:
        membership = self._membership(request, tenant, pk, Role.OWNER)
        body = MemberRoleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = member_services.membership_set_role(
            actor=Actor.from_request(request), membership=membership, role=body.validated_data["role"]
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        membership = self._membership(request, tenant, pk, Role.OWNER)
        member_services.membership_remove(actor=Actor.from_request(request), membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenListView(APIView):
    permission_classes = [IsAuthenticated]
    schema = ListSchema()

    @extend_schema(parameters=TOKENS.parameters(), responses=paginated(TokenSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj, role = tenant_for_request(request, tenant, Role.MEMBER)
        page = TOKENS.page(request, visible_tokens(obj, request, role))
        return page.response(TokenSerializer(page.rows, many=True).data)

    @extend_schema(request=TokenCreateSerializer, responses={201: TokenCreatedSerializer})
    def post(self, request: Request, tenant: str) -> Response:
        obj, role = tenant_for_request(request, tenant, Role.MEMBER)
        body = TokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token, raw = token_services.token_create(
            actor=Actor.from_request(request),
            tenant=obj,
            creator_id=int(request.user.pk or 0),
            creator_role=role,
            name=body.validated_data["name"],
            role=body.validated_data["role"],
            expires_at=body.validated_data.get("expires_at"),
        )
        data = dict(TokenSerializer(token).data)
        data["token"] = raw
        return Response(data, status=status.HTTP_201_CREATED)


class TokenDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses=TokenSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = tenant_for_request(request, tenant, Role.MEMBER)
        return Response(TokenSerializer(get_object_or_404(visible_tokens(obj, request, role), pk=pk)).data)

    @extend_schema(responses=TokenSerializer, description="Revoke the token. Repeating it changes nothing.")
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = tenant_for_request(request, tenant, Role.MEMBER)
        token = get_object_or_404(visible_tokens(obj, request, role), pk=pk)
        token = token_services.token_revoke(actor=Actor.from_request(request), token=token)
        return Response(TokenSerializer(token).data)


class AuditListView(APIView):
    """The tenant's audit trail, newest first (owners only)."""

    permission_classes = [IsAuthenticated]
    schema = ListSchema()

    @extend_schema(parameters=AUDIT.parameters(), responses=paginated(AuditRecordSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj, _ = tenant_for_request(request, tenant, Role.OWNER)
        page = AUDIT.page(request, AuditRecord.objects.for_tenant(obj.pk))
        return page.response(AuditRecordSerializer(page.rows, many=True).data)


class AdminTenantListView(APIView):
    """Staff: every tenant, and creating new ones."""

    permission_classes = [IsAdminUser]
    schema = ListSchema()

    @extend_schema(parameters=ADMIN_TENANTS.parameters(), responses=paginated(TenantSerializer))
    def get(self, request: Request) -> Response:
        page = ADMIN_TENANTS.page(request, Tenant.objects.all())
        return page.response(TenantSerializer(page.rows, many=True).data)

    @extend_schema(request=TenantCreateSerializer, responses={201: TenantSerializer})
    def post(self, request: Request) -> Response:
        body = TenantCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tenant = member_services.tenant_create(
            actor=Actor.from_request(request),
            name=body.validated_data["name"],
            slug=body.validated_data["slug"],
            owner_username=body.validated_data.get("owner") or None,
        )
        return Response(TenantSerializer(tenant).data, status=status.HTTP_201_CREATED)
