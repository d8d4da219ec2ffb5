"""Placement as the compute services see it: ``place()`` hands the decision to the scheduler
(scheduler.services, over scheduler.engine), and the capacity helpers serve resizes."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Sum

from compute.models import Host, Instance, InstanceState

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
    """What the host offers after overcommit (its own ratios, else its aggregate's, else the default)."""
    from scheduler.engine import HostTable
    from scheduler.services import host_rows

    (row,) = host_rows(Host.objects.filter(pk=host.pk))
    vcpus, ram, disk = HostTable([row]).capacity[:, 0]
    return Capacity(int(vcpus), int(ram), int(disk))


def place(instance: Instance) -> Host:
    """Pick a host for the instance and claim it, inside the caller's transaction (the scheduler)."""
    from scheduler import services

    try:
        return services.place(instance)
    except services.NoValidHost as exc:
        raise NoValidHost(str(exc)) from None
