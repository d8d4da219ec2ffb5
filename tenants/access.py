"""Who may do what in which tenant: one place that resolves a request's role, failing closed."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest

from tenants.models import ROLE_RANK, ApiToken, Membership, Role, Tenant


def membership_role(user: Any, tenant: Tenant | int) -> Role | None:
    """The user's role in the tenant, or None (anonymous users and non-members)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    tenant_id = tenant.pk if isinstance(tenant, Tenant) else tenant
    role = (
        Membership.objects.filter(user_id=user.pk, tenant_id=tenant_id).values_list("role", flat=True).first()
    )
    return Role(role) if role else None


def lower_role(a: Role | str, b: Role | str) -> Role:
    return Role(a) if ROLE_RANK[str(a)] <= ROLE_RANK[str(b)] else Role(b)


def request_role(request: HttpRequest, tenant: Tenant) -> Role | None:
    """The role a request acts with in the tenant.

    With an API token: the token's role, never above its creator's current role, and only in
    the token's own tenant. With a session: the user's membership. Staff get nothing implicit
    here; they work through Django admin and the staff pages.
    """
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        if token.tenant_id != tenant.pk:
            return None
        current = membership_role(request.user, tenant)
        return lower_role(token.role, current) if current else None
    return membership_role(getattr(request, "user", None), tenant)


def tenant_for_request(request: HttpRequest, slug: str, need: Role = Role.VIEWER) -> tuple[Tenant, Role]:
    """Resolve the tenant in the URL and check the request's role in it.

    A tenant the request cannot see answers 404, never 403, so its existence is not revealed;
    a visible tenant where the role is too low answers 403 naming the role needed.
    """
    tenant = Tenant.objects.filter(slug=slug, active=True).first()
    role = request_role(request, tenant) if tenant is not None else None
    if tenant is None or role is None:
        raise Http404("No such tenant.")
    require_role(role, need, tenant)
    return tenant, role


def require_role(role: Role, need: Role, tenant: Tenant) -> None:
    """403 naming the role needed, when the request's role in the tenant is below it."""
    if not role.at_least(need):
        raise PermissionDenied(
            f"This needs the {need.label.lower()} role in {tenant.slug}; you are {role.label.lower()}."
        )


def tenants_for_request(request: HttpRequest) -> list[tuple[Tenant, Role]]:
    """The tenants a request may see, with its role in each (a token sees only its own tenant)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    token = getattr(request, "auth", None)
    memberships = Membership.objects.filter(user_id=user.pk, tenant__active=True).select_related("tenant")
    if isinstance(token, ApiToken):
        memberships = memberships.filter(tenant_id=token.tenant_id)
    result = []
    for membership in memberships.order_by("tenant__name"):
        role = Role(membership.role)
        if isinstance(token, ApiToken):
            role = lower_role(token.role, role)
        result.append((membership.tenant, role))
    return result


def require_model_permission(request: HttpRequest, permission: str) -> None:
    """403 naming the permission, when the signed-in staff user lacks a model permission."""
    user = getattr(request, "user", None)
    if user is None or not user.has_perm(permission):
        raise PermissionDenied(f"This needs the {permission} permission.")
