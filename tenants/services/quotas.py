"""Quota claims: a ledger in the database, serialised by a lock on the tenant's quota row."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import Sum
from django.utils import timezone

from core.errors import PriorityNotAllowed, QuotaExceeded, ServiceError
from security.audit import audit_log
from tenants.models import RESOURCES, PriorityClass, Quota, QuotaClaim, Tenant, quota_defaults

logger = logging.getLogger(__name__)


def quota_of(tenant: Tenant) -> Quota:
    """The tenant's quota row, created with the default limits the first time it is needed."""
    quota, _ = Quota.objects.for_tenant(tenant).get_or_create(tenant=tenant, defaults=quota_defaults())
    return quota


def usage_of(tenant: Tenant | int) -> dict[str, int]:
    """Current usage: the sum of the tenant's active claims, per resource."""
    sums = (
        QuotaClaim.objects.for_tenant(tenant)
        .filter(released_at__isnull=True)
        .aggregate(**{r: Sum(r) for r in RESOURCES})
    )
    return {r: int(sums[r] or 0) for r in RESOURCES}


def _validate(resources: Mapping[str, int]) -> dict[str, int]:
    clean: dict[str, int] = {}
    for name, amount in resources.items():
        if name not in RESOURCES:
            raise ServiceError(name, "resource", f"unknown resource {name!r}; known: {', '.join(RESOURCES)}")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ServiceError(
                name, "min_value", f"{name} must be a whole number of at least 0, got {amount!r}"
            )
        clean[name] = amount
    return clean


def quota_claim(
    tenant: Tenant,
    resources: Mapping[str, int],
    reason: str,
    *,
    holder: models.Model | None = None,
    priority: int | None = None,
    enforce: bool = True,
) -> QuotaClaim:
    """Record a claim, or raise QuotaExceeded naming the limit and by how much it would be exceeded.

    The tenant's quota row is locked for the rest of the caller's transaction, so concurrent
    claims are checked one after another against the same ledger and can never overshoot.
    ``enforce=False`` records what is already held whatever the limits say (a resize the host
    refused gives the instance back its old size): like a lowered limit, usage then stands over it.
    """
    amounts = _validate(resources)
    with transaction.atomic():
        quota_of(tenant)  # make sure the row exists before locking it
        quota = Quota.objects.for_tenant(tenant).select_for_update().get()
        if priority is not None and priority > quota.max_priority:
            raise PriorityNotAllowed(PriorityClass(priority).label, PriorityClass(quota.max_priority).label)
        in_use = usage_of(tenant)
        for name, amount in amounts.items():
            limit = quota.limit(name)
            if enforce and amount and in_use[name] + amount > limit:
                raise QuotaExceeded(name, limit, in_use[name], amount)
        claim = QuotaClaim(tenant=tenant, reason=reason[:200], **amounts)
        if holder is not None:
            # Read, not taken from ContentType's per-process cache: a long-lived process (the
            # compute agent claims back a refused resize) can outlive the rows it cached, as when
            # the test suite flushes the database under a running agent.
            meta = holder._meta
            claim.holder_type = ContentType.objects.get(app_label=meta.app_label, model=meta.model_name)
            claim.holder_id = str(holder.pk)
        claim.save()
    return claim


def quota_release(claim: QuotaClaim, reason: str = "released") -> bool:
    """Give a claim back; returns False if it had already been released (safe to repeat)."""
    with transaction.atomic():
        released = (
            QuotaClaim.objects.for_tenant(claim.tenant_id)
            .filter(pk=claim.pk, released_at__isnull=True)
            .update(released_at=timezone.now(), release_reason=reason[:200])
        )
    if released:
        claim.refresh_from_db(fields=["released_at", "release_reason"])
    return bool(released)


# Other apps register how much of each resource really exists for a tenant (e.g. compute counts
# its instances), so the drift check can compare the ledger with reality.
UsageSource = Callable[[Tenant], dict[str, int]]
_usage_sources: list[UsageSource] = []


def register_usage_source(source: UsageSource) -> UsageSource:
    if source not in _usage_sources:
        _usage_sources.append(source)
    return source


@dataclass(frozen=True)
class Drift:
    """A disagreement between the ledger and what really exists."""

    tenant: str
    kind: str
    detail: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.kind} {self.detail}"


def quota_drift(tenant: Tenant) -> list[Drift]:
    """Compare the tenant's ledger with reality: orphan claims, and totals against usage sources."""
    drifts: list[Drift] = []
    active = QuotaClaim.objects.for_tenant(tenant).filter(released_at__isnull=True, holder_type__isnull=False)
    for claim in active.select_related("holder_type"):
        model = claim.holder_type.model_class() if claim.holder_type else None
        if model is None or not model._base_manager.filter(pk=claim.holder_id).exists():
            drifts.append(
                Drift(
                    tenant.slug,
                    "orphan-claim",
                    {"claim": claim.pk, "holder": f"{claim.holder_type}:{claim.holder_id}"},
                )
            )
    if _usage_sources:
        real: dict[str, int] = {}
        for source in _usage_sources:
            for name, amount in source(tenant).items():
                real[name] = real.get(name, 0) + amount
        ledger = usage_of(tenant)
        # Only resources some source reports can be compared.
        diff = {r: {"ledger": ledger[r], "real": n} for r, n in real.items() if ledger[r] != n}
        if diff:
            drifts.append(Drift(tenant.slug, "usage-mismatch", diff))
    return drifts


@transaction.atomic
def quota_set(
    *, actor: Any, tenant: Tenant, limits: Mapping[str, int], max_priority: int | None = None
) -> Quota:
    """Change a tenant's limits (staff). A limit below what is in use stands: running instances
    keep their claims, and new claims are refused until usage falls under it."""

    clean = _validate(limits)
    if max_priority is not None and max_priority not in PriorityClass.values:
        raise ServiceError("max_priority", "choice", f"max_priority must be one of {PriorityClass.values}")
    quota_of(tenant)
    quota = Quota.objects.for_tenant(tenant).select_for_update().get()
    before = {r: quota.limit(r) for r in clean} | (
        {"max_priority": quota.max_priority} if max_priority is not None else {}
    )
    for name, amount in clean.items():
        setattr(quota, f"max_{name}", amount)
    if max_priority is not None:
        quota.max_priority = max_priority
    quota.save()
    after = {r: quota.limit(r) for r in clean} | (
        {"max_priority": max_priority} if max_priority is not None else {}
    )
    audit_log(
        actor=actor, action="quota.update", target=quota, tenant=tenant, detail={"from": before, "to": after}
    )
    return quota


def quota_reports(tenants: list[Tenant]) -> dict[int, dict[str, Any]]:
    """Limits and usage of several tenants at once (two queries), shaped as tenants.api.quota_report."""
    quotas = {q.tenant_id: q for q in Quota.objects.unscoped().filter(tenant__in=tenants)}
    sums = {
        row["tenant_id"]: row
        for row in QuotaClaim.objects.unscoped()
        .filter(tenant__in=tenants, released_at__isnull=True)
        .values("tenant_id")
        .annotate(**{r: Sum(r) for r in RESOURCES})
    }
    defaults = quota_defaults()
    reports = {}
    for tenant in tenants:
        quota = quotas.get(tenant.pk)
        used = sums.get(tenant.pk, {})
        resources = {}
        for r in RESOURCES:
            limit = quota.limit(r) if quota else int(defaults[f"max_{r}"])
            in_use = int(used.get(r) or 0)
            resources[r] = {"limit": limit, "used": in_use, "available": max(limit - in_use, 0)}
        priority = quota.max_priority if quota else defaults["max_priority"]
        reports[tenant.pk] = {"resources": resources, "max_priority": PriorityClass(priority).label.lower()}
    return reports
