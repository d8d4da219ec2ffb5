"""Every tenant gets its quota row the moment it is created, whichever way it was created."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from tenants.models import Tenant


@receiver(post_save, sender=Tenant)
def _create_quota(sender: Any, instance: Tenant, created: bool, **_: Any) -> None:
    if created:
        from tenants.services.quotas import quota_of

        quota_of(instance)
