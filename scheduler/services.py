"""Placement decisions through the engine: the host table from the database, the request an
instance makes, the hosts to try for it best first, and the decision record kept with it.

The scheduler decides and never acts: the claim of a host (under its row lock, trying the next
candidate when one filled up meanwhile) is compute's (compute.services.placement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.utils import timezone

from compute.models import Allocation, CpuMode, Host, Instance
from scheduler.engine import Decision, Engine, HostTable, Request
from scheduler.hosts import FREE_STATES as FREE_STATES
from scheduler.hosts import HELD_RAM as HELD_RAM
from scheduler.hosts import HOSTS, host_rows
from scheduler.models import PlacementDecision

CANDIDATES = 5  # hosts a placement tries, best first, when claims lose races


class NoValidHost(Exception):
    """No host can take the instance; the message names the filter and the nearest miss.

    ``never``: no host could take it even empty (it is larger than any host), so waiting is futile.
    """

    def __init__(self, message: str, never: bool = False) -> None:
        super().__init__(message)
        self.never = never


@dataclass(frozen=True)
class Placement:
    """The decision for one instance: the hosts to claim, best first, and the record that explains it.

    Whoever claims (compute.services.placement) takes the first candidate that still has room
    under its row lock, and keeps the record with the host it got (:func:`placement_record`).
    """

    instance_id: int
    request: Request
    candidates: tuple[int, ...]  # host ids
    record: Mapping[str, Any] = field(compare=False, hash=False)


def engine() -> Engine:
    return Engine(settings.NUBIS_SCHEDULER_FILTERS, settings.NUBIS_SCHEDULER_WEIGHERS)


def group_hosts(instance: Instance) -> frozenset[int]:
    """The hosts the other live members of the instance's server group hold capacity on (both ends
    of a member's move)."""
    if instance.server_group_id is None:
        return frozenset()
    members = (
        Instance.objects.for_tenant(instance.tenant_id)
        .filter(server_group_id=instance.server_group_id)
        .exclude(pk=instance.pk)
        .exclude(state__in=FREE_STATES)
    )
    # A member moving holds both ends of its move.
    held = members.values_list("host_id", "migration_host_id")
    return frozenset(h for pair in held for h in pair if h is not None)


def request_of(instance: Instance) -> Request:
    flavor = instance.flavor
    group = instance.server_group
    return Request(
        vcpus=instance.vcpus,
        ram_mib=instance.current_ram_mib if instance.allocation == Allocation.DYNAMIC else instance.ram_mib,
        disk_gib=instance.disk_gib,
        tenant_id=instance.tenant_id,
        needs_kvm=flavor.cpu_mode == CpuMode.HARDWARE,
        needs_iommu=bool(flavor.pci_passthrough),
        group_policy=group.policy if group is not None else "",
        group_hosts=group_hosts(instance),
    )


def never_fits(instance: Instance, hosts: Any = None) -> str:
    """Why no host could ever take the instance, even empty ("": some host could).

    ``hosts`` narrows the hosts as in :func:`decide`; default: the process's table of all real ones.
    """
    request = request_of(instance)
    if hosts is None:
        with HOSTS.use() as table:
            return engine().never_fits(table, request)
    return engine().never_fits(HostTable(host_rows(hosts)), request)


def host_table_of(host: Host) -> HostTable:
    """One host's row read from the database now (under its row lock, when the caller holds it)."""
    return HostTable(host_rows(Host.objects.filter(pk=host.pk)))


def host_fits(host: Host, request: Request) -> bool:
    """Whether ``host`` has room for ``request`` now: the database decides, not a table read before.

    A claim asks this under the host's row lock.
    """
    free = host_table_of(host).free()[:, 0]
    return bool((free >= request.demand()).all())


def decide(instance: Instance, hosts: Any = None, held: frozenset[int] = frozenset()) -> Placement:
    """Choose the hosts to try for ``instance``, best first; NoValidHost (recorded) when none can take it.

    ``hosts`` narrows the choice to a queryset of hosts (a what-if, or a test that must not see the
    suite's own agent); default: all real ones, through the process's table. ``held``: ids of hosts
    it may not take (their room is held for overdue queued requests). A caller that claims the
    decision holds the lock of the instance's server group first, so that members of one group
    are decided one at a time (compute.services.placement does).
    """
    request = request_of(instance)
    pipeline = engine()

    def select(table: HostTable) -> tuple[Decision, str]:
        mask = np.isin(table.ids, np.fromiter(held, dtype=np.int64)) if held else None
        decision = pipeline.select(table, request, top_n=CANDIDATES, held=mask)
        return decision, "" if decision.host_id is not None else pipeline.never_fits(table, request)

    if hosts is None:  # all real hosts: the process's table, refreshed incrementally
        with HOSTS.use() as table:
            decision, never = select(table)
    else:
        decision, never = select(HostTable(host_rows(hosts)))
    record = decision.as_dict()
    if decision.host_id is None:
        if never:  # the filter that refused still leads; waiting would not help, so no nearest miss
            record["error"] = f"{record['error']}; it can never be placed: {never}"
            record["nearest_miss"] = ""
        placement_record(instance, None, record)
        miss = f"; nearest miss: {record['nearest_miss']}" if record["nearest_miss"] else ""
        raise NoValidHost(f"{record['error']}{miss}", never=bool(never))
    return Placement(instance.pk, request, tuple(c.host_id for c in decision.top), record)


def placement_record(instance: Instance, host: Host | None, record: Mapping[str, Any]) -> None:
    """Keep why the instance went where it went (or nowhere): one record per instance, the latest."""
    PlacementDecision.objects.unscoped().update_or_create(
        instance=instance,
        defaults={
            "tenant_id": instance.tenant_id,
            "host": host,
            "record": dict(record),
            "created": timezone.now(),
        },
    )
