"""Tenancy that fails closed: querysets of tenant-owned models refuse to run without a scope.

Code asks for ``Model.objects.for_tenant(t)`` or ``.visible_to(user)``; the rare global reader
(admin, reconciler, periodic checks) says ``.unscoped()`` explicitly. A filter on the tenant
itself (``tenant=``, ``tenant_id=``, ``tenant__in=``) also counts as a scope, which is what
Django's related managers (``tenant.apitokens``) and prefetching use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, TypeVar

from django.db import models

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from tenants.models import Tenant

_M = TypeVar("_M", bound=models.Model)

SCOPING_LOOKUPS = frozenset(
    {"tenant", "tenant_id", "tenant__in", "tenant_id__in", "tenant__pk", "tenant__slug"}
)


class UnscopedQueryError(RuntimeError):
    """A tenant-owned model was queried without saying whose rows it wants."""


class TenantScopedQuerySet(models.QuerySet[_M]):
    """A QuerySet that raises UnscopedQueryError when evaluated without a tenant scope."""

    _nubis_scoped = False

    def _clone(self) -> Self:
        clone = super()._clone()  # type: ignore[misc]
        clone._nubis_scoped = self._nubis_scoped
        return clone

    def _scoped(self) -> Self:
        clone = self._chain()  # type: ignore[attr-defined]
        clone._nubis_scoped = True
        return clone

    def _guard(self) -> None:
        if not self._nubis_scoped:
            raise UnscopedQueryError(
                f"{self.model.__name__} is tenant-owned: query it with .for_tenant(tenant), "
                ".visible_to(user) or, for a deliberate global read, .unscoped()"
            )

    # Ways to scope.
    def for_tenant(self, tenant: Tenant | int) -> Self:
        return self.filter(tenant=tenant)

    def visible_to(self, user: AbstractBaseUser | AnonymousUser) -> Self:
        """Rows of the active tenants the user is a member of (none for anonymous users)."""
        from tenants.selectors import tenant_ids_for_user

        return self.filter(tenant_id__in=tenant_ids_for_user(user))

    def unscoped(self) -> Self:
        return self._scoped()

    def filter(self, *args: Any, **kwargs: Any) -> Self:
        clone = super().filter(*args, **kwargs)
        if SCOPING_LOOKUPS.intersection(kwargs):
            clone._nubis_scoped = True
        return clone

    def none(self) -> Self:
        return super().none()._scoped()

    # Every way a queryset reaches the database goes through one of these.
    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._guard()
        super()._fetch_all()

    def count(self) -> int:
        self._guard()
        return super().count()

    def exists(self) -> bool:
        self._guard()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._guard()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._guard()
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._guard()
        return super().delete()

    def iterator(self, chunk_size: int | None = None) -> Any:
        self._guard()
        return super().iterator(chunk_size=chunk_size)


class TenantScopedManager(models.Manager[_M]):
    """Default manager of tenant-owned models; see TenantScopedQuerySet."""

    def get_queryset(self) -> TenantScopedQuerySet[_M]:
        return TenantScopedQuerySet(self.model, using=self._db)

    def for_tenant(self, tenant: Tenant | int) -> TenantScopedQuerySet[_M]:
        return self.get_queryset().for_tenant(tenant)

    def visible_to(self, user: AbstractBaseUser | AnonymousUser) -> TenantScopedQuerySet[_M]:
        return self.get_queryset().visible_to(user)

    def unscoped(self) -> TenantScopedQuerySet[_M]:
        return self.get_queryset().unscoped()
