"""Reads of the compute app: what a page or an answer shows, in a fixed number of queries."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, Q

from compute.models import (
    Flavor,
    Image,
    Instance,
    InstanceState,
    Network,
    SecurityGroup,
)
from scheduler.admission import queue_statuses
from scheduler.models import QueueEntry, QueueState
from tenants.models import Tenant


def instance_rows(tenant: Tenant) -> Any:
    """The tenant's live instances with everything their serializer reads, in a fixed number of queries."""
    return (
        Instance.objects.for_tenant(tenant)
        .exclude(state=InstanceState.DELETED)
        .select_related("flavor", "image", "network", "server_group")
        .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.for_tenant(tenant)))
    )


def queue_context(tenant: Tenant) -> dict[str, Any]:
    """The serializer context of a page of instances: the tenant's queue places, read once."""

    waiting = list(QueueEntry.objects.for_tenant(tenant).filter(state=QueueState.WAITING))
    return {"queue": queue_statuses(waiting)}


def flavors_for(tenant: Tenant) -> Any:
    """The flavors the tenant may use: the public ones and its own."""
    return Flavor.objects.filter(Q(public=True) | Q(tenant=tenant))


def images_for(tenant: Tenant) -> Any:
    """The images the tenant may use: the public ones and its own."""
    return Image.objects.filter(Q(public=True) | Q(tenant=tenant))


def networks_for(tenant: Tenant) -> Any:
    """The tenant's networks that are not deleted."""
    return Network.objects.for_tenant(tenant).filter(deleted_at__isnull=True)
