"""Test data builders (real rows in the real database)."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth.models import User

from tenants.models import Membership, Quota, Role, Tenant

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
