"""Read-side queries about tenants."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from tenants.models import Tenant


def tenants_of_user(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Tenant]:
    """Return the active tenants the user is a member of (none for anonymous users)."""
    if not user.is_authenticated:
        return Tenant.objects.none()
    return Tenant.objects.filter(active=True, memberships__user_id=user.pk).distinct()


def tenant_ids_for_user(user: AbstractBaseUser | AnonymousUser) -> list[int]:
    """Return the ids of the user's active tenants, for joining live-event groups."""
    return list(tenants_of_user(user).values_list("id", flat=True))
