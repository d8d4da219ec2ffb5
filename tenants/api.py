"""REST API of the tenants app: tenants, quota and usage, members, tokens and the audit trail."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from security.models import AuditRecord, Outcome, Source
from tenants.access import tenant_for_request, tenants_for_request
from tenants.models import RESOURCES, ApiToken, Membership, PriorityClass, Role, Tenant
from tenants.services import members as member_services
from tenants.services import tokens as token_services
from tenants.services.quotas import quota_of, usage_of

# ---- serializers ---------------------------------------------------------------------------


class TenantSerializer(serializers.ModelSerializer[Tenant]):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "active", "created", "role"]

    def get_role(self, tenant: Tenant) -> str | None:
        roles: dict[int, str] = self.context.get("roles", {})
        return roles.get(tenant.pk)


class TenantCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    slug = serializers.CharField(max_length=50)
    owner = serializers.CharField(
        max_length=150, required=False, allow_blank=True, help_text="Username of the first owner."
    )


class ResourceSerializer(serializers.Serializer[Any]):
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    available = serializers.IntegerField()


class QuotaSerializer(serializers.Serializer[Any]):
    resources = serializers.DictField(child=ResourceSerializer())
    max_priority = serializers.CharField()


class MemberSerializer(serializers.ModelSerializer[Membership]):
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "role", "created"]


class MemberAddSerializer(serializers.Serializer[Any]):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class MemberRoleSerializer(serializers.Serializer[Any]):
    role = serializers.ChoiceField(choices=Role.choices)


class TokenSerializer(serializers.ModelSerializer[ApiToken]):
    created_by = serializers.CharField(source="created_by.username", read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "role",
            "state",
            "created_by",
            "created",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]


class TokenCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.VIEWER)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret. Shown once; only its hash is kept.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class AuditRecordSerializer(serializers.ModelSerializer[AuditRecord]):
    class Meta:
        model = AuditRecord
        fields = [
            "seq",
            "at",
            "actor_name",
            "token_id",
            "tenant_slug",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "source",
            "source_ip",
            "outcome",
            "detail",
        ]


# ---- lists ---------------------------------------------------------------------------------

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

# ---- views ---------------------------------------------------------------------------------


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


def quota_report(tenant: Tenant) -> dict[str, Any]:
    """Limits, usage and what is left, per resource."""
    quota = quota_of(tenant)
    used = usage_of(tenant)
    resources = {
        r: {"limit": quota.limit(r), "used": used[r], "available": max(quota.limit(r) - used[r], 0)}
        for r in RESOURCES
    }
    return {"resources": resources, "max_priority": PriorityClass(quota.max_priority).label.lower()}


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


def visible_tokens(tenant: Tenant, request: Request, role: Role) -> Any:
    """Owners see every token of the tenant; members see their own."""
    tokens = ApiToken.objects.for_tenant(tenant).select_related("created_by")
    return tokens if role.at_least(Role.OWNER) else tokens.filter(created_by_id=request.user.pk)


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
