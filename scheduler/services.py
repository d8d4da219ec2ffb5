"""Placement through the engine: the host table from the database, the claim under a row lock,
and the decision record kept with the instance."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Case, F, Max, Sum, When
from django.utils import timezone

from compute.models import (
    Allocation,
    CpuMode,
    Host,
    HostState,
    Instance,
    InstanceState,
    SampleResolution,
    ServerGroup,
    UsageSample,
)
from scheduler.engine import Engine, HostRow, HostTable, Request
from scheduler.models import PlacementDecision

# Instances in these states hold no capacity on their host.
FREE_STATES = (InstanceState.DELETED, InstanceState.ERROR)
LOAD_WINDOW = timedelta(seconds=60)
# RAM an instance holds on its host: all of it (static), or what the adjuster granted (dynamic).
HELD_RAM = Case(When(allocation=Allocation.DYNAMIC, then=F("current_ram_mib")), default=F("ram_mib"))
CANDIDATES = 5  # hosts a placement tries, best first, when claims lose races


class NoValidHost(Exception):
    """No host can take the instance; the message names the filter and the nearest miss.

    ``never``: no host could take it even empty (it is larger than any host), so waiting is futile.
    """

    def __init__(self, message: str, never: bool = False) -> None:
        super().__init__(message)
        self.never = never


def engine() -> Engine:
    return Engine(settings.NUBIS_SCHEDULER_FILTERS, settings.NUBIS_SCHEDULER_WEIGHERS)


def _ratios(host: Host, aggregate_ratios: dict[str, float]) -> dict[str, float]:
    default = settings.NUBIS_OVERCOMMIT
    return {
        f"{r}_ratio": getattr(host, f"{r}_ratio") or aggregate_ratios.get(f"{r}_ratio") or default[r]
        for r in ("cpu", "ram", "disk")
    }


def host_rows(hosts: Any = None) -> list[HostRow]:
    """Every real host as the engine sees it: four queries whatever the number of hosts."""
    now = timezone.now()
    hosts = list(
        (hosts if hosts is not None else Host.objects.filter(simulated=False)).prefetch_related("aggregates")
    )
    used = _measured_use(now) if settings.NUBIS_ADMISSION_MODE == "demand" else _reserved_use()
    load = {
        row["host_id"]: row["cpu"]
        for row in UsageSample.objects.filter(
            host__isnull=False, resolution=SampleResolution.RAW, at__gte=now - LOAD_WINDOW
        )
        .values("host_id")
        .annotate(cpu=Avg("cpu_pct"))
    }
    rows = []
    for host in hosts:
        aggregates = list(host.aggregates.all())
        dedicated = next((a.tenant_id for a in aggregates if a.tenant_id), 0)
        agg_ratios = {
            field: value
            for a in aggregates
            for field in ("cpu_ratio", "ram_ratio", "disk_ratio")
            if (value := getattr(a, field)) is not None
        }
        held = used.get(host.pk, {})
        rows.append(
            HostRow(
                id=host.pk,
                name=host.name,
                vcpus=host.cpus,
                ram_mib=host.ram_mib,
                disk_gib=host.disk_gib,
                used_vcpus=float(held.get("v") or 0),
                used_ram_mib=float(held.get("r") or 0),
                used_disk_gib=float(held.get("d") or 0),
                enabled=host.state == HostState.ENABLED,
                alive=host.heartbeat_fresh(now),
                kvm=host.kvm_usable,
                iommu=host.iommu,
                dedicated_to=dedicated or 0,
                load=min(max(float(load.get(host.pk) or 0.0) / 100.0, 0.0), 1.0),
                **_ratios(host, agg_ratios),
            )
        )
    return rows


def _placed() -> Any:
    return Instance.objects.unscoped().exclude(state__in=FREE_STATES).exclude(host=None)


def _reserved_use() -> dict[int, dict[str, float]]:
    """What the instances on each host reserved (one query)."""
    return {
        row["host_id"]: row
        for row in _placed().values("host_id").annotate(v=Sum("vcpus"), r=Sum(HELD_RAM), d=Sum("disk_gib"))
    }


def _measured_use(now: datetime) -> dict[int, dict[str, float]]:
    """What the instances on each host were measured using over the last minute (demand mode).

    An instance counts its busiest sample of the window: its CPU time in vCPUs (an idle one counts
    a small fraction) and its memory. One without samples yet (just started) counts what it
    reserved. Disk is always what was reserved: a disk fills up, it does not idle. Nothing counts
    above its reservation.
    """
    measured = {
        row["instance_id"]: row
        for row in UsageSample.objects.filter(
            instance__isnull=False, resolution=SampleResolution.RAW, at__gte=now - LOAD_WINDOW
        )
        .values("instance_id")
        .annotate(cpu=Max("cpu_pct"), mem=Max("mem_bytes"))
    }
    used: dict[int, dict[str, float]] = {}
    for row in _placed().values("id", "host_id", "vcpus", "disk_gib", held=HELD_RAM):
        held = used.setdefault(row["host_id"], {"v": 0.0, "r": 0.0, "d": 0.0})
        sample = measured.get(row["id"])
        if sample is None:
            held["v"] += row["vcpus"]
            held["r"] += row["held"]
        else:
            held["v"] += min(sample["cpu"] / 100.0, row["vcpus"])
            held["r"] += min(sample["mem"] / 2**20, row["held"])
        held["d"] += row["disk_gib"]
    return used


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


def place(instance: Instance, hosts: Any = None) -> Host:
    """Choose a host and claim it, inside the caller's transaction; record why.

    The candidates are tried best first: a claim that finds the host filled meanwhile (another
    placement won the race) moves on to the next one. ``hosts`` narrows the choice to a queryset
    of hosts (a what-if, or a test that must not see the suite's own agent); default: all real ones.
    """
    if instance.server_group_id is not None:
        # Members of one group are placed one at a time, so two cannot both take the same host
        # (anti-affinity) or both open a host of their own (affinity).
        ServerGroup.objects.for_tenant(instance.tenant_id).select_for_update().get(
            pk=instance.server_group_id
        )
    request = request_of(instance)
    table = HostTable(host_rows(hosts))
    pipeline = engine()
    decision = pipeline.select(table, request, top_n=CANDIDATES)
    record = decision.as_dict()
    if decision.host_id is None:
        never = pipeline.never_fits(table, request)
        if never:
            record["error"] = f"no valid host: {never}"
            record["nearest_miss"] = ""
        _record(instance, None, record)
        miss = f"; nearest miss: {record['nearest_miss']}" if record["nearest_miss"] else ""
        raise NoValidHost(f"{record['error']}{miss}", never=bool(never))
    for candidate in decision.top:
        with transaction.atomic():
            locked = Host.objects.select_for_update().get(pk=candidate.host_id)
            if _still_fits(locked, request):
                instance.host = locked
                instance.save(update_fields=["host", "updated"])
                record["host"] = locked.name
                _record(instance, locked, record)
                return locked
    record["error"] = "no valid host: every candidate filled up while placing (lost the race)"
    record["host"] = ""
    _record(instance, None, record)
    raise NoValidHost(record["error"])


def _record(instance: Instance, host: Host | None, record: dict[str, Any]) -> None:
    PlacementDecision.objects.unscoped().update_or_create(
        instance=instance,
        defaults={"tenant_id": instance.tenant_id, "host": host, "record": record, "created": timezone.now()},
    )
