"""Tenants and their members: create, add, change role, remove; a tenant always keeps an owner."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from core.errors import Conflict, ServiceError
from security.audit import Actor, audit_log
from tenants.models import Membership, Role, Tenant, quota_defaults, slug_validator
from tenants.services.quotas import quota_of


def _role(value: str, field: str = "role") -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ServiceError(
            field, "choice", f"{value!r} is not a role; choose owner, member or viewer"
        ) from None


@transaction.atomic
def tenant_create(*, actor: Actor, name: str, slug: str, owner_username: str | None = None) -> Tenant:
    """Create a tenant with the default quota and, optionally, its first owner."""
    name = name.strip()
    if not name:
        raise ServiceError("name", "required", "a tenant needs a name")
    try:
        slug_validator(slug)
    except ValidationError as exc:
        raise ServiceError("slug", "slug", f"invalid slug {slug!r}: {exc.messages[0]}") from None
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict("slug", "unique", f"a tenant with slug {slug!r} already exists")
    if Tenant.objects.filter(name=name).exists():
        raise Conflict("name", "unique", f"a tenant named {name!r} already exists")
    owner = None
    if owner_username:
        owner = _existing_user(owner_username, field="owner")
    tenant = Tenant.objects.create(name=name, slug=slug)
    quota_of(tenant)
    if owner is not None:
        Membership.objects.create(user=owner, tenant=tenant, role=Role.OWNER)
    audit_log(
        actor=actor,
        action="tenant.create",
        target=tenant,
        detail={"owner": owner_username or "", **quota_defaults()},
    )
    return tenant


def _existing_user(username: str, field: str = "username"):
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ServiceError(field, "exists", f"no active user named {username!r}")
    return user


@transaction.atomic
def membership_add(*, actor: Actor, tenant: Tenant, username: str, role: str) -> Membership:
    """Add an existing user to the tenant with a role."""
    checked_role = _role(role)
    user = _existing_user(username.strip())
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise Conflict("username", "unique", f"{username!r} is already a member of {tenant.slug}")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(tenant=tenant, user=user, role=checked_role)
    except IntegrityError:
        raise Conflict("username", "unique", f"{username!r} is already a member of {tenant.slug}") from None
    audit_log(
        actor=actor,
        action="member.add",
        target=membership,
        tenant=tenant,
        detail={"user": username, "role": role},
    )
    return membership


def _owners_left_after(tenant: Tenant, membership: Membership) -> int:
    """Lock the tenant (serialising membership changes) and count the other owners."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).exclude(pk=membership.pk).count()


@transaction.atomic
def membership_set_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    """Change a member's role; the last owner cannot be demoted."""
    new_role = _role(role)
    tenant = membership.tenant
    if (
        membership.role == Role.OWNER
        and new_role != Role.OWNER
        and _owners_left_after(tenant, membership) == 0
    ):
        raise Conflict(
            "role",
            "last_owner",
            f"{membership.user} is the last owner of {tenant.slug}; add another owner first",
        )
    old = membership.role
    membership.role = new_role
    membership.save(update_fields=["role"])
    audit_log(
        actor=actor,
        action="member.role",
        target=membership,
        tenant=tenant,
        detail={"from": old, "to": str(new_role)},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Actor, membership: Membership) -> None:
    """Remove a member; the last owner cannot be removed. Their tokens for this tenant are revoked."""
    tenant = membership.tenant
    if membership.role == Role.OWNER and _owners_left_after(tenant, membership) == 0:
        raise Conflict(
            "member",
            "last_owner",
            f"{membership.user} is the last owner of {tenant.slug}; add another owner first",
        )
    from tenants.services.tokens import revoke_tokens_of

    revoked = revoke_tokens_of(tenant, membership.user_id)
    audit_log(
        actor=actor,
        action="member.remove",
        target=membership,
        tenant=tenant,
        detail={"user": membership.user.get_username(), "role": membership.role, "tokens_revoked": revoked},
    )
    membership.delete()
