"""Portal-wide periodic tasks."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.utils import timezone

from core.events import publish
from tenants.models import Tenant


@shared_task(name="portal.tasks.heartbeat", ignore_result=False)
def heartbeat() -> dict[str, Any]:
    """Send a heartbeat event to every active tenant's live channel; returns what was sent."""
    now = timezone.now().isoformat()
    sent = []
    for tenant_id, slug in Tenant.objects.filter(active=True).values_list("id", "slug"):
        publish(tenant_id, {"type": "heartbeat", "tenant": slug, "at": now})
        sent.append(slug)
    return {"at": now, "tenants": sent}
