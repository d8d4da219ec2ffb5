"""Reads of the compute app: what a page or an answer shows, in a fixed number of queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, Prefetch, Q
from django.utils import timezone

from compute.models import (
    Flavor,
    FloatingIP,
    Image,
    ImageState,
    Instance,
    InstanceState,
    KeyPair,
    Network,
    Operation,
    OperationState,
    SecurityGroup,
    Volume,
)
from scheduler.admission import queue_statuses
from scheduler.models import QueueEntry, QueueState
from tenants.models import Tenant


def instance_rows(tenant: Tenant) -> Any:
    """The tenant's live instances with everything their serializer reads, in a fixed number of queries."""
    return (
        Instance.objects.for_tenant(tenant)
        .exclude(state=InstanceState.DELETED)
        .select_related("flavor", "image", "network", "server_group", "host", "migration_host")
        .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.for_tenant(tenant)))
        .prefetch_related(Prefetch("floating_ips", queryset=FloatingIP.objects.for_tenant(tenant)))
        .prefetch_related(
            Prefetch(
                "volumes",
                queryset=Volume.objects.for_tenant(tenant).filter(deleted_at__isnull=True).order_by("device"),
            )
        )
    )


def queue_context(tenant: Tenant) -> dict[str, Any]:
    """The serializer context of a page of instances: the tenant's queue places, read once."""

    waiting = list(QueueEntry.objects.for_tenant(tenant).filter(state=QueueState.WAITING))
    return {"queue": queue_statuses(waiting)}


def flavors_for(tenant: Tenant) -> Any:
    """The flavors the tenant may use: the public ones and its own."""
    return Flavor.objects.filter(Q(public=True) | Q(tenant=tenant))


def images_for(tenant: Tenant) -> Any:
    """The images the tenant may use: the public ones and its own, once uploaded and checked."""
    return Image.objects.filter(Q(public=True) | Q(tenant=tenant), state=ImageState.ACTIVE)


def networks_for(tenant: Tenant) -> Any:
    """The tenant's networks that are not deleted."""
    return Network.objects.for_tenant(tenant).filter(deleted_at__isnull=True)


def keypairs_for(tenant: Tenant) -> Any:
    """The tenant's key pairs, by name."""
    return KeyPair.objects.for_tenant(tenant).order_by("name")


@dataclass(frozen=True)
class Waiting:
    """An operation accepted but not claimed by any agent yet (for /readyz and the hosts page)."""

    uuid: str
    kind: str
    instance: str
    host: str
    age_s: float
    dispatches: int
    error: str


def operations_waiting(limit: int = 20) -> dict[str, Any]:
    """Pending operations on a host that no agent claimed within NUBIS_DISPATCH_GRACE of being
    accepted: how many, the oldest one's age, and the oldest ``limit`` of them."""
    now = timezone.now()
    rows = (
        Operation.objects.unscoped()
        .filter(
            state=OperationState.PENDING,
            instance__host__isnull=False,
            created__lt=now - timedelta(seconds=settings.NUBIS_DISPATCH_GRACE),
        )
        .select_related("instance", "instance__host")
        .order_by("created", "pk")
    )
    summary = rows.aggregate(count=Count("pk"), first=Min("created"))
    oldest = [
        Waiting(
            uuid=str(op.uuid),
            kind=op.kind,
            instance=op.instance.name,
            host=op.instance.host.name if op.instance.host else "",
            age_s=round((now - op.created).total_seconds(), 1),
            dispatches=op.dispatches,
            error=op.dispatch_error,
        )
        for op in rows[:limit]  # none at all (no query) for limit 0
    ]
    first = summary["first"]
    return {
        "count": summary["count"],
        "oldest_age_s": round((now - first).total_seconds(), 1) if first else 0.0,
        "oldest": oldest,
    }
