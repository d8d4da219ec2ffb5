"""What a tenant's compute really holds, for the quota drift check to compare with the ledger."""

from __future__ import annotations

from django.db.models import Count, Sum

from compute.models import Instance, InstanceKind, InstanceState, Snapshot, Volume, VolumeSnapshot
from tenants.models import Tenant
from tenants.services.quotas import register_usage_source

# Instances in these states hold nothing: deleted, or failed and cleaned up.
NOT_HOLDING = (InstanceState.DELETED, InstanceState.ERROR)


def real_usage(tenant: Tenant) -> dict[str, int]:
    live = Instance.objects.for_tenant(tenant).exclude(state__in=NOT_HOLDING)
    sums = live.aggregate(n=Count("id"), vcpus=Sum("vcpus"), ram=Sum("ram_mib"), disk=Sum("disk_gib"))
    return {
        "instances": live.filter(kind=InstanceKind.VM).count(),
        "containers": live.filter(kind=InstanceKind.CONTAINER).count(),
        "vcpus": int(sums["vcpus"] or 0),
        "ram_mib": int(sums["ram"] or 0),
        "disk_gib": int(sums["disk"] or 0) + _volume_gib(tenant),
        "snapshots": Snapshot.objects.for_tenant(tenant).count()
        + VolumeSnapshot.objects.for_tenant(tenant).count(),
    }


def _volume_gib(tenant: Tenant) -> int:
    """Volumes hold their size from the request on (a failed create is deleted, holding nothing)."""
    live = Volume.objects.for_tenant(tenant).filter(deleted_at__isnull=True)
    return int(live.aggregate(gib=Sum("size_gib"))["gib"] or 0)


def register() -> None:
    register_usage_source(real_usage)
