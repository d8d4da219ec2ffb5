"""Every tenant gets its quota row the moment it is created, whichever way it was created."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_migrate, post_save
from django.dispatch import receiver

from tenants.models import Tenant


@receiver(post_save, sender=Tenant)
def _create_quota(sender: Any, instance: Tenant, created: bool, **_: Any) -> None:
    if created:
        from tenants.services.quotas import quota_of

        quota_of(instance)


OPERATORS_GROUP = "Nubis operators"


@receiver(post_migrate)
def _operators_group(sender: Any, **_: Any) -> None:
    """Keep a group that lets staff read every tenant's rows in admin and edit quotas.

    Give a staff user this group to make them an operator; superusers need nothing.
    """
    # Runs after each app migrates, so permissions of apps migrated later are picked up too.
    from django.contrib.auth.models import Group, Permission

    group, _created = Group.objects.get_or_create(name=OPERATORS_GROUP)
    perms = Permission.objects.filter(codename__startswith="view_") | Permission.objects.filter(
        codename="change_quota"
    )
    group.permissions.add(*perms)
