"""Where traces come from: generated clouds (``generate``) and the database now (``record``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from scheduler.engine import HostRow
from scheduler.simulate.trace import GROUP_POLICIES, Arrival, Departure, Event, Instances, Ints, Trace

# Host shapes (vCPUs, RAM MiB, disk GiB) and flavors of generated clouds; small flavors are common.
SHAPES = ((16, 65536, 1000), (32, 131072, 2000), (64, 262144, 4000))
FLAVORS = ((1, 1024, 10), (2, 2048, 20), (2, 4096, 40), (4, 8192, 80), (8, 16384, 160))
FLAVOR_WEIGHTS = (0.35, 0.25, 0.2, 0.15, 0.05)
PRIORITY_WEIGHTS = (0.2, 0.5, 0.2, 0.1)


# -- generated clouds ------------------------------------------------------------------------------
def generate(
    hosts: int = 1000,
    instances_per_host: int = 10,
    seed: int = 1,
    *,
    arrivals: int = 1000,
    departures: int | None = None,
    interval: float = 1.0,
    lifetime: float | None = 3600.0,
    wait_share: float = 0.2,
    group_share: float = 0.1,
    kvm_share: float = 0.3,
    tenants: int = 60,
    shapes: tuple[tuple[int, int, int], ...] = SHAPES,
    cpu_ratio: float = 4.0,
    mixed: bool = True,
) -> Trace:
    """A cloud of ``hosts`` simulated hosts each running exactly ``instances_per_host`` instances.

    Hosts take one of ``shapes``; with ``mixed`` a few are disabled (2%), dead (1%), lack KVM
    (10%), have an IOMMU (5%) or are dedicated to a tenant (5%). Instances get random flavors
    (small ones are common), redrawn on any host they would overfill. Then ``arrivals`` requests
    come in, ``interval`` seconds apart on average, a share of them waiting when refused, in
    server groups, or needing KVM; ``lifetime`` is their mean life (None: they stay), and
    ``departures`` (default half the arrivals) of the first instances leave meanwhile.
    """
    if hosts < 1 or instances_per_host < 0 or arrivals < 0 or interval <= 0:
        raise ValueError("hosts must be >= 1; instances per host, arrivals >= 0; interval > 0")
    rng = np.random.default_rng(seed)
    shape = np.array(shapes, dtype=np.int64)[rng.integers(len(shapes), size=hosts)]
    if mixed:
        enabled, alive = rng.random(hosts) > 0.02, rng.random(hosts) > 0.01
        kvm, iommu = rng.random(hosts) > 0.1, rng.random(hosts) < 0.05
        dedicated = np.where(rng.random(hosts) < 0.05, rng.integers(1, tenants + 1, size=hosts), 0)
        load = rng.random(hosts)
    else:
        enabled = alive = kvm = np.ones(hosts, dtype=np.bool_)
        iommu = np.zeros(hosts, dtype=np.bool_)
        dedicated, load = np.zeros(hosts, dtype=np.int64), np.zeros(hosts)
    rows = [
        HostRow(
            id=i + 1, name=f"sim-{i + 1:06d}", vcpus=v, ram_mib=r, disk_gib=d, cpu_ratio=cpu_ratio,
            enabled=e, alive=a, kvm=k, iommu=m, dedicated_to=t, load=lo,
        )
        for i, ((v, r, d), e, a, k, m, t, lo) in enumerate(
            zip(shape.tolist(), enabled.tolist(), alive.tolist(), kvm.tolist(), iommu.tolist(),
                dedicated.tolist(), load.tolist(), strict=True)
        )
    ]  # fmt: skip
    capacity = np.floor(shape * np.array([cpu_ratio, 1.0, 1.0])).astype(np.int64)
    instances = _first_instances(rng, capacity, dedicated, instances_per_host, tenants)
    groups, events = _stream(
        rng, instances, arrivals, departures, interval, lifetime, wait_share, group_share,
        kvm_share if mixed else 0.0, tenants, mixed,
    )  # fmt: skip
    return Trace(rows, instances, events, groups, source="generated", seed=seed)


def _first_instances(
    rng: np.random.Generator, capacity: Ints, dedicated: Ints, per_host: int, tenants: int
) -> Instances:
    """``per_host`` instances on every host, none overfilled (hosts x per_host, host-major)."""
    hosts = len(capacity)
    flavors = np.array(FLAVORS, dtype=np.int64)
    choice = rng.choice(len(FLAVORS), size=(hosts, per_host), p=FLAVOR_WEIGHTS)
    for _ in range(100):
        over = (flavors[choice].sum(axis=1) > capacity).any(axis=1)
        if not over.any():
            break
        choice[over] = rng.choice(len(FLAVORS), size=(int(over.sum()), per_host), p=FLAVOR_WEIGHTS)
    else:
        choice[over] = 0  # the smallest flavor, where redrawing kept failing
        if (flavors[choice].sum(axis=1) > capacity).any():
            raise ValueError(f"{per_host} instances of the smallest flavor do not fit on the smallest host")
    demand = flavors[choice.ravel()]
    tenant = rng.integers(1, tenants + 1, size=(hosts, per_host))
    # A dedicated host runs only its tenant's instances (the aggregate filter would allow no other).
    tenant = np.where(dedicated[:, None] > 0, dedicated[:, None], tenant)
    count = hosts * per_host
    return Instances.of(
        {
            "id": np.arange(1, count + 1),
            "host": np.repeat(np.arange(1, hosts + 1), per_host),
            "vcpus": demand[:, 0],
            "ram_mib": demand[:, 1],
            "disk_gib": demand[:, 2],
            "tenant": tenant.ravel(),
            "priority": rng.choice(4, size=count, p=PRIORITY_WEIGHTS),
            "group": np.full(count, -1),
        }
    )


def _stream(
    rng: np.random.Generator,
    instances: Instances,
    arrivals: int,
    departures: int | None,
    interval: float,
    lifetime: float | None,
    wait_share: float,
    group_share: float,
    kvm_share: float,
    tenants: int,
    mixed: bool,
) -> tuple[dict[str, str], list[Event]]:
    first_id = len(instances)  # generated instances are numbered 1..n; arrivals follow
    times = np.cumsum(rng.exponential(interval, size=arrivals))
    flavor = np.array(FLAVORS)[rng.choice(len(FLAVORS), size=arrivals, p=FLAVOR_WEIGHTS)].tolist()
    count = max(1, round(arrivals * group_share / 4))  # about four members per group
    policies = rng.choice(len(GROUP_POLICIES), size=count, p=(0.2, 0.5, 0.1, 0.2))
    groups = {f"g{g + 1}": GROUP_POLICIES[p] for g, p in enumerate(policies.tolist())} if group_share else {}
    group_tenant = rng.integers(1, tenants + 1, size=count).tolist()
    in_group = (rng.random(arrivals) < group_share).tolist()
    group_of = rng.integers(count, size=arrivals).tolist()
    tenant = rng.integers(1, tenants + 1, size=arrivals).tolist()
    lives = rng.exponential(lifetime, size=arrivals).tolist() if lifetime else [None] * arrivals
    events: list[Event] = []
    for i, (t, (v, r, d)) in enumerate(zip(times.tolist(), flavor, strict=True)):
        g = group_of[i] if in_group[i] and groups else -1
        events.append(
            Arrival(
                t=round(t, 3), id=first_id + i + 1, vcpus=v, ram_mib=r, disk_gib=d,
                tenant=group_tenant[g] if g >= 0 else tenant[i],
                priority=int(rng.choice(4, p=PRIORITY_WEIGHTS)), group=f"g{g + 1}" if g >= 0 else "",
                wait=bool(rng.random() < wait_share),
                lifetime=None if lives[i] is None else round(lives[i], 3),
                kvm=bool(rng.random() < kvm_share), iommu=bool(mixed and rng.random() < 0.01),
            )
        )  # fmt: skip
    leaving = min(arrivals // 2 if departures is None else departures, len(instances))
    if leaving:
        horizon = float(times[-1]) if arrivals else 3600.0
        chosen = rng.choice(instances.id, size=leaving, replace=False).tolist()
        at = rng.uniform(0.0, horizon, size=leaving).tolist()
        events.extend(Departure(t=round(t, 3), id=int(i)) for t, i in zip(at, chosen, strict=True))
    events.sort(key=lambda e: e.t)
    return groups, events


# -- recorded clouds -------------------------------------------------------------------------------
def record(hosts: Any = None) -> Trace:
    """A trace of the database now: every host (real and simulated), live instances, queued ones.

    For what-if runs: real hosts are marked so that the simulator only plans on them. Instances
    waiting in the admission queue become arrivals at time 0 that wait. Simulated hosts have no
    agent to send heartbeats, so they count as alive; real hosts keep their heartbeat's verdict.
    """
    # The simulator runs without Django (bench/placement.py): only recording a real cloud needs it.
    from compute.models import CpuMode, Host, Instance, InstanceState, ServerGroup
    from scheduler.services import FREE_STATES, HELD_RAM, host_rows

    queryset = Host.objects.all() if hosts is None else hosts
    simulated = set(queryset.filter(simulated=True).values_list("pk", flat=True))
    rows = [
        replace(r, used_vcpus=0, used_ram_mib=0, used_disk_gib=0, alive=r.alive or r.id in simulated)
        for r in host_rows(queryset)
    ]
    live = list(
        Instance.objects.unscoped()
        .exclude(state__in=FREE_STATES)
        .filter(host__in=queryset)
        .order_by("pk")
        .values("pk", "host_id", "vcpus", "disk_gib", "tenant_id", "priority", "server_group_id",
                held=HELD_RAM)
    )  # fmt: skip
    queued = list(
        Instance.objects.unscoped()
        .filter(state=InstanceState.QUEUED, host=None)
        .order_by("created", "pk")
        .values("pk", "vcpus", "disk_gib", "tenant_id", "priority", "server_group_id",
                "flavor__cpu_mode", "flavor__pci_passthrough", held=HELD_RAM)
    )  # fmt: skip
    group_ids = {i["server_group_id"] for i in live + queued if i["server_group_id"] is not None}
    groups = {
        f"sg-{pk}": policy
        for pk, policy in ServerGroup.objects.unscoped().filter(pk__in=group_ids).values_list("pk", "policy")
    }
    index = {name: i for i, name in enumerate(groups)}
    instances = Instances.of(
        {
            "id": [i["pk"] for i in live],
            "host": [i["host_id"] for i in live],
            "vcpus": [i["vcpus"] for i in live],
            "ram_mib": [i["held"] for i in live],
            "disk_gib": [i["disk_gib"] for i in live],
            "tenant": [i["tenant_id"] for i in live],
            "priority": [i["priority"] for i in live],
            "group": [index[f"sg-{g}"] if (g := i["server_group_id"]) else -1 for i in live],
        }
    )
    events: list[Event] = [
        Arrival(
            t=0.0, id=q["pk"], vcpus=q["vcpus"], ram_mib=q["held"], disk_gib=q["disk_gib"],
            tenant=q["tenant_id"], priority=q["priority"],
            group=f"sg-{q['server_group_id']}" if q["server_group_id"] else "", wait=True,
            kvm=q["flavor__cpu_mode"] == CpuMode.HARDWARE, iommu=bool(q["flavor__pci_passthrough"]),
        )
        for q in queued
    ]  # fmt: skip
    real = frozenset(r.id for r in rows if r.id not in simulated)
    return Trace(rows, instances, events, groups, real_hosts=real, source="recorded")
