"""Placement through the engine: the host table from the database, the claim under a row lock,
and the decision record kept with the instance."""

from __future__ import annotations

from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compute.models import (
    Allocation,
    CpuMode,
    Host,
    Instance,
    ServerGroup,
)
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


class _Filled(Exception):
    """The candidate filled up between the decision and its claim."""


def engine() -> Engine:
    return Engine(settings.NUBIS_SCHEDULER_FILTERS, settings.NUBIS_SCHEDULER_WEIGHERS)


def request_of(instance: Instance) -> Request:
    from compute.services.server_groups import group_hosts

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
    """Why no host could ever take the instance, even empty ("": some host could)."""
    return engine().never_fits(HostTable(host_rows(hosts)), request_of(instance))


def host_table_of(host: Host) -> HostTable:
    """One host's row read from the database now (under its row lock, when the caller holds it)."""
    return HostTable(host_rows(Host.objects.filter(pk=host.pk)))


def _still_fits(host: Host, request: Request) -> bool:
    """Under the host's row lock: the database, not the table read before, decides."""
    free = host_table_of(host).free()[:, 0]
    return bool((free >= request.demand()).all())


def place(instance: Instance, hosts: Any = None, held: frozenset[int] = frozenset()) -> Host:
    """Choose a host and claim it, inside the caller's transaction; record why.

    The candidates are tried best first: a claim that finds the host filled meanwhile (another
    placement won the race) moves on to the next one. ``hosts`` narrows the choice to a queryset
    of hosts (a what-if, or a test that must not see the suite's own agent); default: all real ones.
    ``held``: ids of hosts it may not take (their room is held for overdue queued requests).
    """
    if instance.server_group_id is not None:
        # Members of one group are placed one at a time, so two cannot both take the same host
        # (anti-affinity) or both open a host of their own (affinity).
        ServerGroup.objects.for_tenant(instance.tenant_id).select_for_update().get(
            pk=instance.server_group_id
        )
    request = request_of(instance)
    pipeline = engine()

    def decide(table: HostTable) -> tuple[Decision, str]:
        mask = np.isin(table.ids, np.fromiter(held, dtype=np.int64)) if held else None
        decision = pipeline.select(table, request, top_n=CANDIDATES, held=mask)
        return decision, "" if decision.host_id is not None else pipeline.never_fits(table, request)

    if hosts is None:  # all real hosts: the process's table, refreshed incrementally
        with HOSTS.use() as table:
            decision, never = decide(table)
    else:
        decision, never = decide(HostTable(host_rows(hosts)))
    record = decision.as_dict()
    if decision.host_id is None:
        if never:  # the filter that refused still leads; waiting would not help, so no nearest miss
            record["error"] = f"{record['error']}; it can never be placed: {never}"
            record["nearest_miss"] = ""
        _record(instance, None, record)
        miss = f"; nearest miss: {record['nearest_miss']}" if record["nearest_miss"] else ""
        raise NoValidHost(f"{record['error']}{miss}", never=bool(never))
    for candidate in decision.top:
        try:
            with transaction.atomic():
                locked = Host.objects.select_for_update().get(pk=candidate.host_id)
                if not _still_fits(locked, request):
                    # Rolling the savepoint back releases this host's lock: a placement holds
                    # at most the one host it claims, so two can never wait on each other.
                    raise _Filled
                instance.host = locked
                instance.save(update_fields=["host", "updated"])
                record["host"] = locked.name
                _record(instance, locked, record)
                return locked
        except _Filled:
            continue
    record["error"] = "no valid host: every candidate filled up while placing (lost the race)"
    record["host"] = ""
    _record(instance, None, record)
    raise NoValidHost(record["error"])


def _record(instance: Instance, host: Host | None, record: dict[str, Any]) -> None:
    PlacementDecision.objects.unscoped().update_or_create(
        instance=instance,
        defaults={"tenant_id": instance.tenant_id, "host": host, "record": record, "created": timezone.now()},
    )
