"""Dynamic memory allocation: move each dynamic instance's grant between its minimum and its size,
following its measured demand, without ever giving out more than its host has free.

The grant is ``Instance.current_ram_mib``: a VM's balloon target, a container's memory limit. Its
host counts it as used (``scheduler.services.HELD_RAM``), so a grant only grows into the host's
free RAM. :func:`plan` is the pure policy and :func:`allocation_decide` runs it for one host, read
from the database: it returns :class:`Grant` decisions. The adjuster (compute.services.allocation)
saves them under the host's row lock, and the host's agent applies them afterwards
(``compute.memory_apply``, see compute/services/memory.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Exists, Max, OuterRef, QuerySet, Sum
from django.utils import timezone

from compute.models import (
    CONTAINER_MIN_RAM_MIB,
    VM_MIN_RAM_MIB,
    Allocation,
    Host,
    HostState,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationState,
    SampleResolution,
    UsageSample,
)
from scheduler.services import FREE_STATES, HELD_RAM, host_table_of

MIB = 1 << 20


@dataclass(frozen=True)
class Policy:
    """The adjuster's numbers (shares are of the current grant).

    - ``high_water`` 0.85: grow when usage is above 85% of the grant: below that a container still
      has room for a burst before its OOM killer, a VM before it swaps or drops its caches.
    - ``low_water`` 0.50: shrink only when usage is below half the grant. The wide band between
      the two water marks is the hysteresis: a grant moves only on a real change of demand.
    - ``target`` 0.70: a grant that moves is set so usage is 70% of it. That lies inside the band,
      so the next pass with the same usage leaves it alone (no flapping).
    - ``min_step_mib`` 8 / ``min_step_share`` 0.05: a step is at least 8 MiB and 5% of the grant.
      A shrink smaller than a step is not worth a balloon move or a ``runc update``; a growth under
      pressure that is smaller than a step is rounded up to one (a small container at 8 MiB must not
      stay starved because its needs grow a MiB at a time).
    - ``min_samples`` 2: an instance needs two samples in the window; one reading may be a blip.
    """

    high_water: float = 0.85
    low_water: float = 0.50
    target: float = 0.70
    min_step_mib: int = 8
    min_step_share: float = 0.05
    min_samples: int = 2

    def step(self, grant_mib: int) -> int:
        """The smallest move worth making from ``grant_mib``."""
        return max(self.min_step_mib, math.ceil(grant_mib * self.min_step_share))


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Demand:
    """One dynamic instance as the planner sees it: its bounds, its grant and its measured usage."""

    key: str
    min_mib: int
    max_mib: int
    grant_mib: int
    usage_mib: float

    @property
    def pressure(self) -> float:
        """Usage as a share of the grant: who needs room most."""
        return self.usage_mib / self.grant_mib if self.grant_mib > 0 else math.inf


def _wanted(d: Demand, policy: Policy) -> int:
    """The grant ``d`` should have, before the host's free RAM is considered."""
    ideal = min(max(math.ceil(d.usage_mib / policy.target), d.min_mib), d.max_mib)
    grant = d.grant_mib
    if not d.min_mib <= grant <= d.max_mib:
        return ideal  # out of its bounds (a resize or a flavor change): any move is a correction
    if d.usage_mib > policy.high_water * grant:
        return min(max(ideal, grant + policy.step(grant)), d.max_mib)
    if d.usage_mib < policy.low_water * grant and grant - ideal >= policy.step(grant):
        return ideal
    return grant


def plan(free_mib: int, demands: Iterable[Demand], policy: Policy = DEFAULT_POLICY) -> dict[str, int]:
    """New grants, by key, of the instances whose grant should change (the others are left out).

    ``free_mib`` is the host's free RAM with the current grants counted as used. What shrinks is
    given back first, then the growths are served by pressure, highest first (an instance below its
    minimum before all); when the room runs out the next one gets what is left, and the rest wait
    for the next pass. Total growth never exceeds ``free_mib`` plus what the shrinks freed.
    """
    if not 0 < policy.low_water < policy.target < policy.high_water <= 1:
        raise ValueError("the policy needs 0 < low_water < target < high_water <= 1")
    items = sorted(demands, key=lambda d: d.key)
    new: dict[str, int] = {}
    grows: list[tuple[Demand, int]] = []
    room = free_mib
    for d in items:
        want = _wanted(d, policy)
        if want < d.grant_mib:
            new[d.key] = want
            room += d.grant_mib - want
        elif want > d.grant_mib:
            grows.append((d, want))
    grows.sort(key=lambda item: (item[0].grant_mib >= item[0].min_mib, -item[0].pressure, item[0].key))
    for d, want in grows:
        give = min(want - d.grant_mib, max(room, 0))
        if give > 0:
            new[d.key] = d.grant_mib + give
            room -= give
    return new


# -- the adjuster's decisions ------------------------------------------------------------------
@dataclass(frozen=True)
class Grant:
    """Decision: the instance (``key``, its uuid) should hold ``to_mib`` instead of ``from_mib``."""

    instance_id: int
    key: str
    from_mib: int
    to_mib: int
    usage_mib: float  # the busiest sample of the window: the demand the grant follows


@dataclass(frozen=True)
class HostGrants:
    """The grants that should move on one host, and the host's free RAM they were decided against."""

    host_id: int
    free_mib: int
    grants: tuple[Grant, ...]


def usage_window(policy: Policy = DEFAULT_POLICY) -> timedelta:
    """How far back usage counts: one adjuster period, so each pass sees what happened since the last
    (or longer, if the period is too short for the samples the policy wants)."""
    seconds = max(settings.NUBIS_ALLOCATION_SECONDS, policy.min_samples * settings.NUBIS_METRICS_SECONDS)
    return timedelta(seconds=seconds)


def allocation_hosts(now: datetime | None = None) -> list[Host]:
    """The hosts the adjuster visits: enabled, real, with a fresh heartbeat."""
    now = now or timezone.now()
    hosts = Host.objects.filter(simulated=False, state=HostState.ENABLED)
    return [host for host in hosts if host.heartbeat_fresh(now)]


def allocation_candidates(host: Host) -> QuerySet[Instance]:
    """The host's instances whose grant may move now: running, dynamic, not busy with an operation
    (one busy waits for the next pass)."""
    busy = Operation.objects.unscoped().filter(
        instance=OuterRef("pk"), state__in=[OperationState.PENDING, OperationState.RUNNING]
    )
    return (
        Instance.objects.unscoped()
        .select_related("flavor")
        .filter(host=host, state=InstanceState.RUNNING, allocation=Allocation.DYNAMIC)
        .exclude(Exists(busy))
    )


def _bounds(instance: Instance) -> tuple[int, int]:
    floor = CONTAINER_MIN_RAM_MIB if instance.kind == InstanceKind.CONTAINER else VM_MIN_RAM_MIB
    low = max(instance.flavor.min_ram_mib or instance.ram_mib, floor)
    return min(low, instance.ram_mib), instance.ram_mib


def _free_ram(host: Host) -> int:
    """The host's RAM after overcommit minus every grant on it (reservations, whatever the
    admission mode: the adjuster must never hand out memory that is reserved but idle)."""
    capacity = int(host_table_of(host).capacity[1, 0])
    held = (
        Instance.objects.unscoped()
        .filter(host=host)
        .exclude(state__in=FREE_STATES)
        .aggregate(ram=Sum(HELD_RAM))["ram"]
    )
    return capacity - int(held or 0)


def allocation_decide(
    host: Host, instances: Iterable[Instance], policy: Policy = DEFAULT_POLICY
) -> HostGrants:
    """The grants of ``instances`` (dynamic ones on ``host``) that should move, by their demand.

    Demand is the busiest sample of the usage window: growing follows a burst at once, shrinking
    waits until even the peak is low. An instance without ``policy.min_samples`` recent samples is
    left where it is. Read under the caller's locks (the host's row, the instances'), so that the
    host's free RAM cannot change before the grants are saved.
    """
    by_pk = {i.pk: i for i in instances}
    since = timezone.now() - usage_window(policy)
    usage = {
        row["instance_id"]: row
        for row in UsageSample.objects.filter(
            instance_id__in=list(by_pk), resolution=SampleResolution.RAW, at__gte=since
        )
        .values("instance_id")
        .annotate(peak=Max("mem_bytes"), n=Count("id"))
    }
    demands, ids = [], {}
    for pk, instance in by_pk.items():
        row = usage.get(pk)
        if row is None or row["n"] < policy.min_samples:
            continue  # no recent demand known: leave it where it is
        key = str(instance.uuid)
        low, high = _bounds(instance)
        demands.append(Demand(key, low, high, instance.current_ram_mib, row["peak"] / MIB))
        ids[key] = pk
    free = _free_ram(host)
    wanted = {d.key: d for d in demands}
    grants = tuple(
        Grant(ids[key], key, wanted[key].grant_mib, grant, wanted[key].usage_mib)
        for key, grant in plan(free, demands, policy).items()
    )
    return HostGrants(host.pk, free, grants)
