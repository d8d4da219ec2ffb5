"""Periodic checks of the tenants app."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import transaction

from security.audit import Actor, audit_log
from security.models import Outcome
from tenants.models import Tenant
from tenants.services.quotas import quota_drift

logger = logging.getLogger(__name__)


@shared_task(name="tenants.tasks.quota_drift_check")
def quota_drift_check() -> dict[str, Any]:
    """Compare every tenant's claim ledger with what really exists; report and audit each drift."""
    report: dict[str, list[dict[str, Any]]] = {}
    actor = Actor.system("quota_drift_check")
    for tenant in Tenant.objects.filter(active=True).order_by("slug"):
        drifts = quota_drift(tenant)
        if not drifts:
            continue
        report[tenant.slug] = [{"kind": d.kind, **d.detail} for d in drifts]
        for drift in drifts:
            logger.warning("quota drift: %s", drift)
        with transaction.atomic():
            audit_log(
                actor=actor,
                action="quota.drift",
                tenant=tenant,
                outcome=Outcome.ERROR,
                target_repr=f"ledger of {tenant.slug}",
                detail={"drifts": report[tenant.slug]},
            )
    return {"tenants_with_drift": len(report), "drift": report}
