"""Test data builders (real rows in the real database)."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth.models import User

from security.audit import Actor
from tenants.models import Membership, Quota, Role, Tenant
from tenants.services.tokens import token_create

_seq = itertools.count(1)
PASSWORD = "pw-for-tests-only-9d1f"


def make_user(username: str | None = None, **extra: Any) -> User:
    return User.objects.create_user(username or f"user{next(_seq)}", password=PASSWORD, **extra)


def make_tenant(slug: str | None = None, **limits: int) -> Tenant:
    slug = slug or f"tenant-{next(_seq)}"
    tenant = Tenant.objects.create(name=slug.replace("-", " ").title(), slug=slug)
    if limits:
        Quota.objects.for_tenant(tenant).update(**{f"max_{k}": v for k, v in limits.items()})
    return tenant


def add_member(tenant: Tenant, user: User | None = None, role: Role = Role.MEMBER) -> User:
    user = user or make_user()
    Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


def make_token(tenant: Tenant, user: User, role: Role = Role.MEMBER, name: str = "test") -> str:
    """An API token of ``user`` (a member of ``tenant``) with ``role``; returns its secret."""
    creator_role = Role(Membership.objects.get(tenant=tenant, user=user).role)
    _, raw = token_create(
        actor=Actor.system("test"),
        tenant=tenant,
        creator_id=user.pk,
        creator_role=creator_role,
        name=name,
        role=role,
    )
    return raw
