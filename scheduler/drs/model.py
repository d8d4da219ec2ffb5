"""The cluster as the balancer sees it: hosts and instances as numpy columns, with their measured load.

One model for VMs and containers. A host's load is the measured demand of the instances on it
against its physical capacity, per resource (CPU in CPUs, memory in MiB); its load is the larger
of the two shares (its dominant resource), so a host short of either counts as busy. An instance's
demand is its own smoothed metrics (``scheduler.drs.read``), its size is what it reserved (what a
move claims on the target, under the target's overcommit ratios), and its cost is what moving it
takes: the memory to copy for a live move, a restart for a cold one.

This module knows nothing of Django: ``scheduler.drs.read`` fills it from the database and the
benchmark from generated traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

# Move costs, in seconds of work weighted by the interruption they cause (see ``move_cost``).
LINK_MIB_S = 1024.0  # what a migration stream carries per second (a 10 Gb/s link, most of it)
LIVE_DOWNTIME_S = 0.1  # a live move's pause (bench/results/migration.json: 90 ms p50)
COLD_DOWNTIME_S = 5.0  # a cold move: stop, undefine, make again and start on the target
DOWNTIME_WEIGHT = 10.0  # a second of interruption weighs ten seconds of copying


def move_cost(live: bool, ram_mib: float, disk_gib: float = 0.0, copy_disk: bool = False) -> float:
    """What moving one instance costs: transfer seconds plus weighted downtime.

    A live move copies the guest's memory (and its disk without a shared store) while it runs,
    then pauses it briefly; a cold move stops it, and it is down until it starts again.
    """
    transfer = (disk_gib * 1024.0 if copy_disk else 0.0) / LINK_MIB_S
    if live:
        return transfer + ram_mib / LINK_MIB_S + DOWNTIME_WEIGHT * LIVE_DOWNTIME_S
    return transfer + DOWNTIME_WEIGHT * COLD_DOWNTIME_S


@dataclass
class Cluster:
    """Hosts (n columns) and instances (m columns).

    Hosts: ``cpus``/``ram`` physical capacity (the load's denominators); ``capacity`` (3 x n:
    vCPUs, RAM MiB, disk GiB after overcommit) and ``reserved`` what is claimed on each, for the
    fit of a move; ``usable``: may take instances (enabled, heartbeat fresh); ``dedicated_to``
    a tenant id or 0; ``kvm``/``iommu`` capabilities; ``overhead`` (2 x n) demand that is the
    host's own and never moves.

    Instances: ``host`` the row of the host they run on; ``cpu``/``ram`` measured demand; ``size``
    (3 x m) reserved; ``live``: moves live (a running VM) or cold (a container); ``cost``;
    ``fixed``: "" when the balancer may move it, else why not; ``group`` an index into
    ``group_policy`` or -1; ``ha``: restarted elsewhere if its host dies; ``contention``: "" or
    why its demand is not met where it is (filled by the reader, added to by ``contended``).
    """

    host_ids: Ints
    host_names: list[str]
    cpus: Floats
    ram: Floats
    capacity: Floats
    reserved: Floats
    usable: Mask
    dedicated_to: Ints
    kvm: Mask
    iommu: Mask
    inst_ids: Ints
    inst_names: list[str]
    host: Ints
    cpu: Floats
    ram_demand: Floats
    size: Floats
    live: Mask
    cost: Floats
    tenant: Ints
    group: Ints
    needs_kvm: Mask
    needs_iommu: Mask
    ha: Mask
    fixed: list[str]
    group_policy: list[str] = field(default_factory=list)
    overhead: Floats | None = None
    contention: list[str] | None = None
    host_measured: Floats | None = None  # the host's own measured CPU share, shown beside (not used)

    def __post_init__(self) -> None:
        n, m = len(self.host_ids), len(self.inst_ids)
        for name in ("cpus", "ram", "usable", "dedicated_to", "kvm", "iommu"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"host column {name} has {len(getattr(self, name))} rows, not {n}")
        for name in ("host", "cpu", "ram_demand", "live", "cost", "tenant", "group", "needs_kvm"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"instance column {name} has {len(getattr(self, name))} rows, not {m}")
        if self.capacity.shape != (3, n) or self.reserved.shape != (3, n) or self.size.shape != (3, m):
            raise ValueError("capacity and reserved are 3 x hosts, size is 3 x instances")
        if len(self.fixed) != m or len(self.inst_names) != m or len(self.host_names) != n:
            raise ValueError("names and fixed reasons need one entry per row")
        if m and (self.host.min() < 0 or self.host.max() >= n):
            raise ValueError("an instance's host is not a row of the host columns")
        if self.overhead is None:
            self.overhead = np.zeros((2, n))
        if self.contention is None:
            self.contention = [""] * m

    @property
    def n(self) -> int:
        return len(self.host_ids)

    @property
    def m(self) -> int:
        return len(self.inst_ids)

    def demand(self) -> Floats:
        """Each host's demand, 2 x n (CPUs, RAM MiB): its instances' plus its own overhead."""
        out = np.zeros((2, self.n)) if self.overhead is None else self.overhead.copy()
        if self.m:
            out[0] += np.bincount(self.host, weights=self.cpu, minlength=self.n)
            out[1] += np.bincount(self.host, weights=self.ram_demand, minlength=self.n)
        return out

    def shares(self, demand: Floats | None = None) -> Floats:
        """Each host's load per resource, 2 x n, as shares of its physical capacity."""
        d = self.demand() if demand is None else demand
        caps = np.vstack([np.maximum(self.cpus, 1e-9), np.maximum(self.ram, 1e-9)])
        shares: Floats = d / caps
        return shares

    def loads(self) -> Floats:
        """Each host's load: its dominant resource's share."""
        loads: Floats = self.shares().max(axis=0)
        return loads

    def instance_share(self) -> Floats:
        """Each instance's load on its own host (dominant resource)."""
        if not self.m:
            return np.zeros(0)
        cpu = self.cpu / np.maximum(self.cpus[self.host], 1e-9)
        ram = self.ram_demand / np.maximum(self.ram[self.host], 1e-9)
        share: Floats = np.maximum(cpu, ram)
        return share

    def bound(self) -> float:
        """A lower bound on the highest host load any placement can reach, over usable hosts:
        the average load (per resource, the larger) or the largest instance on its host."""
        hosts = self.usable
        if not hosts.any():
            return 0.0
        total = self.demand()[:, hosts].sum(axis=1)
        caps = np.array([self.cpus[hosts].sum(), self.ram[hosts].sum()])
        average = float((total / np.maximum(caps, 1e-9)).max())
        largest = float(self.instance_share().max()) if self.m else 0.0
        return max(average, largest)

    def even(self, bound: float | None = None) -> float:
        """The highest host load evening out can bring the cluster to: the bound (``bound`` when
        the caller has it), or the hosts' average load (dominant resource) when that is higher.

        The bound is reachable only if every host runs the cluster's mix of CPU and memory; hosts
        of other shapes (more memory per CPU) run different mixes, and moves that even out the
        load leave each host's dominant resource at the average of the loads."""
        hosts = self.usable
        if not hosts.any():
            return 0.0
        return max(self.bound() if bound is None else bound, float(self.loads()[hosts].mean()))

    def contended(self) -> list[str]:
        """Per instance: why its demand is not met ("" when it is): the reader's reasons, plus a host
        whose measured demand is above its physical CPUs or RAM."""
        reasons = list(self.contention or [""] * self.m)
        shares = self.shares()
        over: Mask = np.asarray((shares > 1.0).any(axis=0))
        if not over.any() or not self.m:
            return reasons
        for i in np.flatnonzero(over[self.host]).tolist():
            h = int(self.host[i])
            what = [
                f"host {self.host_names[h]} {name} demand is {share:.0%} of its capacity"
                for name, share in (("CPU", shares[0, h]), ("memory", shares[1, h]))
                if share > 1.0
            ]
            if not reasons[i]:
                reasons[i] = "; ".join(what)
        return reasons
