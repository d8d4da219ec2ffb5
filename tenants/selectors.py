"""Read-side queries about tenants."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from tenants.models import RESOURCES, ApiToken, PriorityClass, Role, Tenant
from tenants.services.quotas import quota_of, usage_of


def tenants_of_user(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Tenant]:
    """Return the active tenants the user is a member of (none for anonymous users)."""
    if not user.is_authenticated:
        return Tenant.objects.none()
    return Tenant.objects.filter(active=True, memberships__user_id=user.pk).distinct()


def tenant_ids_for_user(user: AbstractBaseUser | AnonymousUser) -> list[int]:
    """Return the ids of the user's active tenants, for joining live-event groups."""
    return list(tenants_of_user(user).values_list("id", flat=True))


def quota_report(tenant: Tenant) -> dict[str, Any]:
    """Limits, usage and what is left, per resource."""
    quota = quota_of(tenant)
    used = usage_of(tenant)
    resources = {
        r: {"limit": quota.limit(r), "used": used[r], "available": max(quota.limit(r) - used[r], 0)}
        for r in RESOURCES
    }
    return {"resources": resources, "max_priority": PriorityClass(quota.max_priority).label.lower()}


def visible_tokens(tenant: Tenant, request: Any, role: Role) -> Any:
    """Owners see every token of the tenant; members see their own."""
    tokens = ApiToken.objects.for_tenant(tenant).select_related("created_by")
    return tokens if role.at_least(Role.OWNER) else tokens.filter(created_by_id=request.user.pk)
