"""Choose a host for an instance and claim its capacity in the database.

This is the simple capacity-checked placement the scheduler issue will replace behind the same
``place()`` function: filter by state, heartbeat and capability, then claim under a row lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from compute.models import CpuMode, Host, HostState, Instance, InstanceState

# Instances in these states hold no capacity on their host.
FREE_STATES = (InstanceState.DELETED, InstanceState.ERROR)


class NoValidHost(Exception):
    """No host can take the instance; the message names the filter that removed the last candidate."""


@dataclass(frozen=True)
class Capacity:
    vcpus: int
    ram_mib: int
    disk_gib: int


def used_on(host: Host) -> Capacity:
    """What the instances placed on the host reserve (the database, not the hypervisor, is the truth)."""
    sums = (
        Instance.objects.unscoped()
        .filter(host=host)
        .exclude(state__in=FREE_STATES)
        .aggregate(vcpus=Sum("vcpus"), ram=Sum("ram_mib"), disk=Sum("disk_gib"))
    )
    return Capacity(int(sums["vcpus"] or 0), int(sums["ram"] or 0), int(sums["disk"] or 0))


def total_of(host: Host) -> Capacity:
    ratio = settings.NUBIS_OVERCOMMIT
    return Capacity(
        int(host.cpus * ratio["cpu"]), int(host.ram_mib * ratio["ram"]), int(host.disk_gib * ratio["disk"])
    )


def _fits(host: Host, want: Instance, used: Capacity | None = None) -> bool:
    used, total = used or used_on(host), total_of(host)
    return (
        used.vcpus + want.vcpus <= total.vcpus
        and used.ram_mib + want.ram_mib <= total.ram_mib
        and used.disk_gib + want.disk_gib <= total.disk_gib
    )


def place(instance: Instance) -> Host:
    """Pick a host for the instance and record it, inside the caller's transaction."""
    flavor = instance.flavor
    now = timezone.now()
    candidates = list(Host.objects.filter(simulated=False).order_by("name"))
    # What each host holds, read once (one query per host) for the filter and the ordering.
    used: dict[int, Capacity] = {}

    def used_by(host: Host) -> Capacity:
        if host.pk not in used:
            used[host.pk] = used_on(host)
        return used[host.pk]

    steps = [
        ("state", lambda h: h.state == HostState.ENABLED, "not enabled"),
        ("heartbeat", lambda h: h.heartbeat_fresh(now), "agent heartbeat is stale"),
        ("kvm", lambda h: flavor.cpu_mode != CpuMode.HARDWARE or h.kvm_usable, "no working KVM"),
        ("iommu", lambda h: not flavor.pci_passthrough or h.iommu, "no IOMMU for PCI passthrough"),
        ("capacity", lambda h: _fits(h, instance, used_by(h)), "not enough free vCPU, RAM or disk"),
    ]
    if not candidates:
        raise NoValidHost("no valid host: no compute host is registered")
    for name, keep, reason in steps:
        remaining = [h for h in candidates if keep(h)]
        if not remaining:
            raise NoValidHost(
                f"no valid host: filter '{name}' removed the last {len(candidates)} candidate(s): {reason}"
            )
        candidates = remaining
    # Spread: most free RAM first. Claim under a lock; if the host filled up meanwhile, try the next.
    candidates.sort(key=lambda h: total_of(h).ram_mib - used_by(h).ram_mib, reverse=True)
    for host in candidates:
        with transaction.atomic():
            locked = Host.objects.select_for_update().get(pk=host.pk)
            if _fits(locked, instance):
                instance.host = locked
                instance.save(update_fields=["host", "updated"])
                return locked
    raise NoValidHost("no valid host: every candidate filled up while placing (lost the race)")
