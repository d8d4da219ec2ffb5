"""Hosts as the engine sees them, read from the database: rows, and a per-process table kept
up to date incrementally.

A host's row has two parts. The slow part (capacity, overcommit ratios, capabilities, dedicated
aggregate) changes when an operator edits a host or an aggregate, or an agent registers; the live
part (what is used on it, its state and heartbeat, its load) changes all the time. The cached
table re-reads the slow part only for hosts whose ``version`` moved (or everything, when
aggregates or the set of hosts changed), and the live part as narrow column queries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Avg, Case, Count, F, Max, Sum, When
from django.utils import timezone

from compute.models import Allocation, Host, HostState, Instance, InstanceState, SampleResolution, UsageSample
from scheduler.engine import HostRow, HostTable
from scheduler.models import Aggregate

# Instances in these states hold no capacity on their host.
FREE_STATES = (InstanceState.DELETED, InstanceState.ERROR)
LOAD_WINDOW = timedelta(seconds=60)
# RAM an instance holds on its host: all of it (static), or what the adjuster granted (dynamic).
HELD_RAM = Case(When(allocation=Allocation.DYNAMIC, then=F("current_ram_mib")), default=F("ram_mib"))


def _ratios(host: Host, aggregate_ratios: dict[str, float]) -> dict[str, float]:
    default = settings.NUBIS_OVERCOMMIT
    return {
        f"{r}_ratio": getattr(host, f"{r}_ratio") or aggregate_ratios.get(f"{r}_ratio") or default[r]
        for r in ("cpu", "ram", "disk")
    }


def _placed() -> Any:
    return Instance.objects.unscoped().exclude(state__in=FREE_STATES).exclude(host=None)


def _incoming() -> Any:
    """Instances moving to a host: they hold its capacity too until the move ends."""
    return Instance.objects.unscoped().exclude(state__in=FREE_STATES).exclude(migration_host=None)


def reserved_use() -> dict[int, dict[str, float]]:
    """What the instances on each host, and those moving to it, reserved (two queries)."""
    sums = {"v": Sum("vcpus"), "r": Sum(HELD_RAM), "d": Sum("disk_gib")}
    used: dict[int, dict[str, float]] = {
        row["host_id"]: row for row in _placed().values("host_id").annotate(**sums)
    }
    for row in _incoming().values("migration_host_id").annotate(**sums):
        held = used.setdefault(row["migration_host_id"], {"v": 0.0, "r": 0.0, "d": 0.0})
        for key in ("v", "r", "d"):
            held[key] = float(held.get(key) or 0) + float(row[key] or 0)
    return used


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
    rows = [*_placed().values("id", "host_id", "vcpus", "disk_gib", held=HELD_RAM)]
    rows += [
        {**row, "host_id": row.pop("migration_host_id")}
        for row in _incoming().values("id", "migration_host_id", "vcpus", "disk_gib", held=HELD_RAM)
    ]
    for row in rows:
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


def _used(now: datetime) -> dict[int, dict[str, float]]:
    return _measured_use(now) if settings.NUBIS_ADMISSION_MODE == "demand" else reserved_use()


def host_loads(now: datetime, window: timedelta = LOAD_WINDOW, hosts: Any = None) -> dict[int, float]:
    """Each host's measured CPU load over ``window`` (default the last minute), 0..1; ``hosts``
    narrows it to a queryset or list of hosts."""
    samples = UsageSample.objects.filter(
        host__isnull=False, resolution=SampleResolution.RAW, at__gte=now - window
    )
    if hosts is not None:
        samples = samples.filter(host__in=hosts)
    return {
        row["host_id"]: min(max(float(row["cpu"] or 0.0) / 100.0, 0.0), 1.0)
        for row in samples.values("host_id").annotate(cpu=Avg("cpu_pct"))
    }


def _alive(heartbeat_at: datetime | None, now: datetime) -> bool:
    if heartbeat_at is None:
        return False
    return (now - heartbeat_at).total_seconds() <= settings.NUBIS_HOST_HEARTBEAT_TIMEOUT


def host_rows(hosts: Any = None) -> list[HostRow]:
    """Hosts as the engine sees them (default: every real one): four queries whatever their number."""
    now = timezone.now()
    hosts = list(
        (hosts if hosts is not None else Host.objects.filter(simulated=False)).prefetch_related("aggregates")
    )
    used = _used(now)
    load = host_loads(now)
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
                alive=_alive(host.heartbeat_at, now),
                kvm=host.kvm_usable,
                iommu=host.iommu,
                dedicated_to=dedicated or 0,
                load=load.get(host.pk, 0.0),
                **_ratios(host, agg_ratios),
            )
        )
    return rows


def _structure() -> tuple[int, int, int, int, int]:
    """What makes the cache rebuild: the set of real hosts, the aggregates and their members.

    Counts and sums of ids and versions: a host gone and another added, or an aggregate edited or
    given a host, each moves one of them.
    """
    hosts = Host.objects.filter(simulated=False).aggregate(n=Count("pk"), ids=Sum("pk"))
    aggregates = Aggregate.objects.aggregate(n=Count("pk"), versions=Sum("version"))
    links = Aggregate.hosts.through.objects.count()
    return (hosts["n"], hosts["ids"] or 0, aggregates["n"], aggregates["versions"] or 0, links)


class CachedTable:
    """One process's table of every real host, refreshed incrementally before each use.

    Each refresh: one query for the structure (rebuild everything if it moved), one narrow query
    for every host's state, heartbeat and version (re-read the hosts whose version moved), one
    for usage and one for load. ``use()`` holds a lock while the caller decides, so no thread sees
    a half-refreshed table. ``reloads`` counts full rebuilds and hosts re-read (tests watch it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: HostTable | None = None
        self._structure: tuple[int, ...] = ()
        self._versions: dict[int, int] = {}
        self.reloads = {"full": 0, "hosts": 0}

    @contextmanager
    def use(self) -> Iterator[HostTable]:
        with self._lock:
            yield self._refresh()

    def _refresh(self) -> HostTable:
        now = timezone.now()
        structure = _structure()
        states = list(
            Host.objects.filter(simulated=False).values_list("pk", "state", "heartbeat_at", "version")
        )
        versions = {pk: version for pk, _state, _beat, version in states}
        table = self._table
        if table is None or structure != self._structure:
            table = self._table = HostTable(host_rows())
            self.reloads["full"] += 1
        else:
            moved = [pk for pk, version in versions.items() if self._versions.get(pk) != version]
            if moved:
                for row in host_rows(Host.objects.filter(pk__in=moved)):
                    table.upsert(row)
                self.reloads["hosts"] += len(moved)
        self._structure, self._versions = structure, versions
        self._live(table, now, states)
        return table

    @staticmethod
    def _live(table: HostTable, now: datetime, states: list[tuple[int, str, datetime | None, int]]) -> None:
        """Set the live columns of every host: usage, state and heartbeat, load."""
        n = len(table)
        used = np.zeros((3, n))
        for host_id, held in _used(now).items():
            i = table.index.get(host_id)
            if i is not None:
                used[:, i] = (held.get("v") or 0, held.get("r") or 0, held.get("d") or 0)
        enabled = np.zeros(n, dtype=np.bool_)
        alive = np.zeros(n, dtype=np.bool_)
        for host_id, state, heartbeat_at, _version in states:
            i = table.index.get(host_id)
            if i is not None:
                enabled[i] = state == HostState.ENABLED
                alive[i] = _alive(heartbeat_at, now)
        load = np.zeros(n)
        for host_id, value in host_loads(now).items():
            i = table.index.get(host_id)
            if i is not None:
                load[i] = value
        table.set_live(used, enabled, alive, load)

    def clear(self) -> None:
        with self._lock:
            self._table, self._structure, self._versions = None, (), {}


# One per process (each web worker, each Celery worker process).
HOSTS = CachedTable()
