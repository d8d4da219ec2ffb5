"""The cluster read from the database for a pass: hosts, running instances, their smoothed demand.

Demand is each running instance's mean over the window (``DrsSettings.window_seconds``) of its
own samples: CPU in CPUs (``cpu_pct`` / 100), memory in MiB, never above what it reserved. One
without two samples in the window yet counts at its size, so a new instance is never mistaken for
an idle one. A host's load is the sum of its instances' demand: the host's own samples (shown
beside, ``host_measured``) also count processes that no move can relieve.

What the balancer may not move is named here with the reason (pinned, not running, busy with an
operation, PCI passthrough, snapshots that block a live move, on a lone host); the move itself
checks again when it starts (compute.services.migration), and a recommendation that no longer
holds expires with that reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Avg, Count, Q
from django.utils import timezone

from compute.models import (
    Host,
    HostState,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    SampleResolution,
    ServerGroup,
    Snapshot,
    UsageSample,
)
from scheduler.allocation import DEFAULT_POLICY
from scheduler.drs.levels import AUTOMATION, strictest
from scheduler.drs.model import Cluster, move_cost
from scheduler.engine import HostTable
from scheduler.hosts import FREE_STATES, HELD_RAM, host_loads, host_rows, reserved_use
from scheduler.models import Aggregate

MIB = float(1 << 20)
MIN_SAMPLES = 2


@dataclass
class Read:
    """A cluster read for a pass, with what the pass needs beside it: each host's effective
    automation level and object, and each instance's object, by row."""

    cluster: Cluster
    hosts: list[Host]
    automation: list[str]
    instances: Sequence[Instance]
    estimated: list[int]  # instance ids counted at their size (too few samples)
    group_names: list[str]  # each cluster group index's name in a recorded trace ("sg-<pk>")


def moved_recently(cooldown: timedelta, now: Any = None) -> frozenset[int]:
    """Instances that moved (for any reason) within ``cooldown``, or are moving now."""
    since = (now or timezone.now()) - cooldown
    ops = Operation.objects.unscoped().filter(kind__in=[OperationKind.MIGRATE, OperationKind.HA_RESTART])
    recent = ops.filter(
        Q(state__in=[OperationState.PENDING, OperationState.RUNNING])
        | Q(state=OperationState.SUCCEEDED, finished__gte=since)
    )
    return frozenset(recent.values_list("instance_id", flat=True))


def host_automation(host_ids: Iterable[int], cluster_level: str) -> dict[int, str]:
    """Each host's automation level: the strictest override of its aggregates, else the cluster's.
    One query, over the aggregate links of these hosts only (a create asks about one host)."""
    levels = dict.fromkeys(host_ids, cluster_level)
    per_host: dict[int, list[str]] = {}
    links = (
        Aggregate.hosts.through.objects.filter(host_id__in=list(levels))
        .exclude(aggregate__drs_automation="")
        .values_list("host_id", "aggregate__drs_automation")
    )
    for host_id, level in links:
        per_host.setdefault(host_id, []).append(level)
    for pk, found in per_host.items():
        known = [lvl for lvl in found if lvl in AUTOMATION]
        if known:
            levels[pk] = strictest(*known)
    return levels


def _demand(ids: list[int], since: Any) -> dict[int, tuple[float, float, int]]:
    """Mean CPU (CPUs) and memory (MiB) of each instance's RAW samples since ``since``, and how many."""
    rows = (
        UsageSample.objects.filter(instance_id__in=ids, resolution=SampleResolution.RAW, at__gte=since)
        .values("instance_id")
        .annotate(cpu=Avg("cpu_pct"), mem=Avg("mem_bytes"), n=Count("id"))
    )
    return {
        r["instance_id"]: (float(r["cpu"] or 0) / 100.0, float(r["mem"] or 0) / MIB, int(r["n"]))
        for r in rows
    }


def _why_fixed(i: Instance, busy: set[int], snapshots: set[int], host: Host) -> str:
    if i.drs_pinned:
        return "pinned: do not move (DRS)"
    if i.state != InstanceState.RUNNING:
        return f"{i.state}: only running instances are balanced"
    if i.pk in busy:
        return "busy with another operation"
    if i.flavor.pci_passthrough:
        return "PCI passthrough device: it cannot move"
    if i.kind == InstanceKind.VM and i.pk in snapshots:
        return "has snapshots, which libvirt does not move"
    if i.kind == InstanceKind.VM and not host.peer_uri:
        return f"{host.name} is a lone host (no address on the hosts' network)"
    return ""


def read_cluster(*, window: timedelta, cluster_level: str, hosts: Any = None, now: Any = None) -> Read:
    """The real cluster now (``hosts``: a queryset to narrow it, as the tests' labs do)."""
    now = now or timezone.now()
    host_objs = list((hosts if hosts is not None else Host.objects.filter(simulated=False)).order_by("pk"))
    rows = host_rows(Host.objects.filter(pk__in=[h.pk for h in host_objs]))
    by_id = {r.id: r for r in rows}
    rows = [by_id[h.pk] for h in host_objs]
    table = HostTable(rows)
    reserved = np.zeros((3, len(host_objs)))
    for host_id, held in reserved_use().items():
        j = table.index.get(host_id)
        if j is not None:
            reserved[:, j] = (held.get("v") or 0, held.get("r") or 0, held.get("d") or 0)
    index = {h.pk: j for j, h in enumerate(host_objs)}
    instances = list(
        Instance.objects.unscoped()
        .select_related("flavor")
        .exclude(state__in=FREE_STATES)
        .filter(host__in=host_objs)
        .annotate(held=HELD_RAM)
        .order_by("pk")
    )
    ids = [i.pk for i in instances]
    demand = _demand(ids, now - window)
    busy = set(
        Operation.objects.unscoped()
        .filter(instance_id__in=ids, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .values_list("instance_id", flat=True)
    )
    snapshots = set(
        Snapshot.objects.unscoped().filter(instance_id__in=ids).values_list("instance_id", flat=True)
    )
    group_ids = sorted({i.server_group_id for i in instances if i.server_group_id})
    policies = dict(ServerGroup.objects.unscoped().filter(pk__in=group_ids).values_list("pk", "policy"))
    group_index = {g: k for k, g in enumerate(group_ids)}
    m = len(instances)
    cpu, ram = np.zeros(m), np.zeros(m)
    estimated: list[int] = []
    contention = [""] * m
    free_ram = table.capacity[1] - reserved[1]
    for k, i in enumerate(instances):
        sample = demand.get(i.pk)
        running = i.state == InstanceState.RUNNING
        if not running:
            continue  # a stopped or busy instance uses (nearly) nothing and is not balanced
        if sample is None or sample[2] < MIN_SAMPLES:
            cpu[k], ram[k] = float(i.vcpus), float(i.held)
            estimated.append(i.pk)
            continue
        cpu[k] = min(sample[0], float(i.vcpus))
        ram[k] = min(sample[1], float(i.held))
        if (
            i.allocation == "dynamic"
            and sample[1] > DEFAULT_POLICY.high_water * i.held
            and i.held < i.ram_mib
            and free_ram[index[i.host_id]] < DEFAULT_POLICY.step(i.held)
        ):
            contention[k] = (
                f"memory demand {sample[1]:.0f} MiB presses on its grant of {i.held} MiB and "
                f"{host_objs[index[i.host_id]].name} has no free RAM to grow it"
            )
    shared = settings.NUBIS_SHARED_INSTANCE_STORE
    live = [i.kind == InstanceKind.VM for i in instances]
    size = np.array([[i.vcpus, i.held, i.disk_gib] for i in instances], dtype=np.float64).T.reshape(3, m)
    host_cpu = host_loads(now, window, host_objs)
    cluster = Cluster(
        host_ids=np.array([h.pk for h in host_objs], dtype=np.int64),
        host_names=[h.name for h in host_objs],
        cpus=np.array([max(h.cpus, 1) for h in host_objs], dtype=np.float64),
        ram=np.array([max(h.ram_mib, 1) for h in host_objs], dtype=np.float64),
        capacity=table.capacity.copy(),
        reserved=reserved,
        usable=np.array([h.state == HostState.ENABLED and h.heartbeat_fresh(now) for h in host_objs]),
        dedicated_to=table.dedicated_to.copy(),
        kvm=table.kvm.copy(),
        iommu=table.iommu.copy(),
        inst_ids=np.array(ids, dtype=np.int64),
        inst_names=[i.name for i in instances],
        host=np.array([index[i.host_id] for i in instances], dtype=np.int64),
        cpu=cpu,
        ram_demand=ram,
        size=size,
        live=np.array(live, dtype=np.bool_),
        cost=np.array(
            [
                move_cost(lv, float(i.held), float(i.disk_gib), copy_disk=lv and not shared)
                for lv, i in zip(live, instances, strict=True)
            ]
        ),
        tenant=np.array([i.tenant_id for i in instances], dtype=np.int64),
        group=np.array([group_index.get(i.server_group_id or 0, -1) for i in instances], dtype=np.int64),
        needs_kvm=np.array([i.flavor.cpu_mode == "hardware" for i in instances], dtype=np.bool_),
        needs_iommu=np.array([bool(i.flavor.pci_passthrough) for i in instances], dtype=np.bool_),
        ha=np.array([i.ha for i in instances], dtype=np.bool_),
        fixed=[_why_fixed(i, busy, snapshots, host_objs[index[i.host_id]]) for i in instances],
        group_policy=[policies[g] for g in group_ids],
        contention=contention,
        host_measured=np.array([host_cpu.get(h.pk, 0.0) for h in host_objs]),
    )
    levels = host_automation([h.pk for h in host_objs], cluster_level)
    return Read(
        cluster=cluster,
        hosts=host_objs,
        automation=[levels[h.pk] for h in host_objs],
        instances=instances,
        estimated=estimated,
        group_names=[f"sg-{g}" for g in group_ids],
    )
