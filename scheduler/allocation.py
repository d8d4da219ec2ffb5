"""Dynamic allocation: move each dynamic instance's memory and CPU grants between their minimum and
its size, following its measured demand, without ever giving out more than its host has.

The memory grant is ``Instance.current_ram_mib``: a VM's balloon target, a container's memory
limit. Its host counts it as used (``scheduler.services.HELD_RAM``), so a grant only grows into the
host's free RAM. The CPU grant is ``Instance.current_cpu_pct`` (% of one CPU, between the flavor's
``min_cpu_pct`` and its CPU: see ``Instance.cpu_bounds_pct``): a container's CFS quota, a hard cap,
so the quotas of a host's containers never add up to more than its CPUs after overcommit (what its
VMs' vCPUs and its static containers hold counted first); a VM's CPU shares, a weight that counts
only under contention, so a VM's grant needs no room. :func:`plan` is the pure policy, the same for
both resources with their own :class:`Policy`, and :func:`allocation_decide` runs it for one host,
read from the database: it returns :class:`Grant` decisions. The adjuster
(compute.services.allocation) saves them under the host's row lock, and the host's agent applies
them afterwards (``compute.memory_apply``, see compute/services/memory.py).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Case, Count, Exists, F, IntegerField, Max, OuterRef, QuerySet, Sum, When
from django.db.models.functions import Coalesce
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


RAM = "ram"  # grants in MiB
CPU = "cpu"  # grants in % of one CPU


@dataclass(frozen=True)
class Policy:
    """The adjuster's numbers (shares are of the current grant; steps in the grant's unit).

    - ``high_water`` 0.85: grow when usage is above 85% of the grant: below that a container still
      has room for a burst before its OOM killer, a VM before it swaps or drops its caches.
    - ``low_water`` 0.50: shrink only when usage is below half the grant. The wide band between
      the two water marks is the hysteresis: a grant moves only on a real change of demand.
    - ``target`` 0.70: a grant that moves is set so usage is 70% of it. That lies inside the band,
      so the next pass with the same usage leaves it alone (no flapping).
    - ``min_step`` 8 (MiB) / ``min_step_share`` 0.05: a step is at least 8 MiB and 5% of the grant.
      A shrink smaller than a step is not worth a balloon move or a ``runc update``; a growth under
      pressure that is smaller than a step is rounded up to one (a small container at 8 MiB must not
      stay starved because its needs grow a MiB at a time).
    - ``min_samples`` 2: an instance needs two samples in the window; one reading may be a blip.
    """

    high_water: float = 0.85
    low_water: float = 0.50
    target: float = 0.70
    min_step: int = 8
    min_step_share: float = 0.05
    min_samples: int = 2

    def step(self, grant: int) -> int:
        """The smallest move worth making from ``grant``."""
        return max(self.min_step, math.ceil(grant * self.min_step_share))


DEFAULT_POLICY = Policy()  # memory
# CPU: the same band, steps of at least 5% of one CPU. A container's usage never exceeds its quota,
# so a busy one reads about 100% of its grant: above the high-water mark, it grows by at least
# 1/target (x1.43) a pass until its ceiling; one idle comes down to usage/target, or its floor.
CPU_POLICY = Policy(min_step=5)


@dataclass(frozen=True)
class Demand:
    """One dynamic instance as the planner sees it: its bounds, its grant and its measured usage,
    in the resource's unit (MiB, or % of one CPU)."""

    key: str
    minimum: int
    maximum: int
    grant: int
    usage: float

    @property
    def pressure(self) -> float:
        """Usage as a share of the grant: who needs room most."""
        return self.usage / self.grant if self.grant > 0 else math.inf


def _wanted(d: Demand, policy: Policy) -> int:
    """The grant ``d`` should have, before the host's room is considered."""
    ideal = min(max(math.ceil(d.usage / policy.target), d.minimum), d.maximum)
    grant = d.grant
    if not d.minimum <= grant <= d.maximum:
        return ideal  # out of its bounds (a resize or a flavor change): any move is a correction
    if d.usage > policy.high_water * grant:
        return min(max(ideal, grant + policy.step(grant)), d.maximum)
    if d.usage < policy.low_water * grant and grant - ideal >= policy.step(grant):
        return ideal
    return grant


def plan(free: int, demands: Iterable[Demand], policy: Policy = DEFAULT_POLICY) -> dict[str, int]:
    """New grants, by key, of the instances whose grant should change (the others are left out).

    ``free`` is the host's room with the current grants counted as used (its free RAM; the CPU its
    containers' quotas may still take). What shrinks is given back first, then the growths are
    served by pressure, highest first (an instance below its minimum before all); when the room runs
    out the next one gets what is left, and the rest wait for the next pass. Total growth never
    exceeds ``free`` plus what the shrinks freed.
    """
    if not 0 < policy.low_water < policy.target < policy.high_water <= 1:
        raise ValueError("the policy needs 0 < low_water < target < high_water <= 1")
    items = sorted(demands, key=lambda d: d.key)
    new: dict[str, int] = {}
    grows: list[tuple[Demand, int]] = []
    room = free
    for d in items:
        want = _wanted(d, policy)
        if want < d.grant:
            new[d.key] = want
            room += d.grant - want
        elif want > d.grant:
            grows.append((d, want))
    grows.sort(key=lambda item: (item[0].grant >= item[0].minimum, -item[0].pressure, item[0].key))
    for d, want in grows:
        give = min(want - d.grant, max(room, 0))
        if give > 0:
            new[d.key] = d.grant + give
            room -= give
    return new


# -- the adjuster's decisions ------------------------------------------------------------------
@dataclass(frozen=True)
class Grant:
    """Decision: the instance (``key``, its uuid) should hold ``new`` of ``resource`` (``RAM`` in
    MiB, ``CPU`` in % of one CPU) instead of ``old``."""

    instance_id: int
    key: str
    resource: str
    old: int
    new: int
    usage: float  # the busiest sample of the window: the demand the grant follows


@dataclass(frozen=True)
class HostGrants:
    """The grants that should move on one host, and the host's room they were decided against:
    its free RAM, and the CPU its containers' quotas could still take (% of one CPU)."""

    host_id: int
    free_mib: int
    free_cpu_pct: int
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


# CPU an instance holds on its host against its containers' quotas, in % of one CPU: a container
# its quota (its dynamic grant, else its flavor's cap), a VM all its vCPUs (its shares cap nothing).
HELD_CPU = Case(
    When(
        kind=InstanceKind.CONTAINER,
        allocation=Allocation.DYNAMIC,
        current_cpu_pct__isnull=False,
        then=F("current_cpu_pct"),
    ),
    When(kind=InstanceKind.CONTAINER, then=Coalesce(F("flavor__cpu_limit_pct"), F("flavor__vcpus") * 100)),
    default=F("vcpus") * 100,
    output_field=IntegerField(),
)


def _free(host: Host) -> tuple[int, int]:
    """The host's RAM after overcommit minus every grant on it (reservations, whatever the
    admission mode: the adjuster must never hand out memory that is reserved but idle), and its
    CPUs after overcommit (% of one CPU) minus what every instance on it holds (``HELD_CPU``)."""
    capacity = host_table_of(host).capacity[:, 0]
    held = (
        Instance.objects.unscoped()
        .filter(host=host)
        .exclude(state__in=FREE_STATES)
        .aggregate(ram=Sum(HELD_RAM), cpu=Sum(HELD_CPU))
    )
    return int(capacity[1]) - int(held["ram"] or 0), int(capacity[0] * 100) - int(held["cpu"] or 0)


def allocation_decide(
    host: Host,
    instances: Iterable[Instance],
    policy: Policy = DEFAULT_POLICY,
    cpu_policy: Policy = CPU_POLICY,
) -> HostGrants:
    """The memory and CPU grants of ``instances`` (dynamic ones on ``host``) that should move, by
    their demand.

    Demand is the busiest sample of the usage window (memory in use, CPU in % of one CPU): growing
    follows a burst at once, shrinking waits until even the peak is low. An instance without
    ``policy.min_samples`` recent samples is left where it is. Containers' CPU grows only into the
    host's room for quotas; VMs' CPU (shares) needs none. Read under the caller's locks (the host's
    row, the instances'), so that the host's room cannot change before the grants are saved.
    """
    by_pk = {i.pk: i for i in instances}
    since = timezone.now() - usage_window(policy)
    usage = {
        row["instance_id"]: row
        for row in UsageSample.objects.filter(
            instance_id__in=list(by_pk), resolution=SampleResolution.RAW, at__gte=since
        )
        .values("instance_id")
        .annotate(peak=Max("mem_bytes"), cpu=Max("cpu_pct"), n=Count("id"))
    }
    ram: list[Demand] = []
    cpu: dict[bool, list[Demand]] = {True: [], False: []}  # by "is a container"
    ids = {}
    for pk, instance in by_pk.items():
        row = usage.get(pk)
        if row is None or row["n"] < max(policy.min_samples, cpu_policy.min_samples):
            continue  # no recent demand known: leave it where it is
        key = str(instance.uuid)
        ids[key] = pk
        low, high = _bounds(instance)
        ram.append(Demand(key, low, high, instance.current_ram_mib, row["peak"] / MIB))
        low, high = instance.cpu_bounds_pct
        grant = high if instance.current_cpu_pct is None else instance.current_cpu_pct  # empty: all
        container = instance.kind == InstanceKind.CONTAINER
        cpu[container].append(Demand(key, low, high, grant, float(row["cpu"])))
    free_mib, free_cpu = _free(host)
    moves = [
        (RAM, ram, plan(free_mib, ram, policy)),
        (CPU, cpu[True], plan(free_cpu, cpu[True], cpu_policy)),
        (CPU, cpu[False], plan(sys.maxsize, cpu[False], cpu_policy)),  # shares: no room to run out of
    ]
    grants: list[Grant] = []
    for resource, demands, new in moves:
        by_key = {d.key: d for d in demands}
        for key, grant in new.items():
            grants.append(Grant(ids[key], key, resource, by_key[key].grant, grant, by_key[key].usage))
    return HostGrants(host.pk, free_mib, free_cpu, tuple(grants))
