"""Serializers of the tenants API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from security.models import AuditRecord
from tenants.models import ApiToken, Membership, Role, Tenant


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
