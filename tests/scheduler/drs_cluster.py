"""Small DRS clusters written out by hand, for the planner's tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.drs import Cluster, Move, move_cost


@dataclass
class H:
    name: str
    cpus: float = 4.0
    ram: float = 8192.0
    vcpus_cap: float = 16.0  # after overcommit
    ram_cap: float = 8192.0
    disk_cap: float = 500.0
    usable: bool = True
    dedicated_to: int = 0
    kvm: bool = False


@dataclass
class I:  # noqa: E742 - a short name keeps the tables readable
    name: str
    host: str
    cpu: float  # demand, CPUs
    ram: float = 256.0  # demand, MiB
    vcpus: int = 1
    ram_size: float = 512.0
    disk: float = 5.0
    live: bool = True
    tenant: int = 1
    group: str = ""
    ha: bool = False
    fixed: str = ""
    needs_kvm: bool = False


def cluster(hosts: list[H], instances: list[I], groups: dict[str, str] | None = None) -> Cluster:
    groups = groups or {}
    names = list(groups)
    where = {h.name: j for j, h in enumerate(hosts)}
    size = np.array([[i.vcpus, i.ram_size, i.disk] for i in instances], dtype=np.float64).T.reshape(3, -1)
    host = np.array([where[i.host] for i in instances], dtype=np.int64)
    reserved = np.vstack([np.bincount(host, weights=size[r], minlength=len(hosts)) for r in range(3)]).astype(
        np.float64
    )
    return Cluster(
        host_ids=np.arange(1, len(hosts) + 1, dtype=np.int64),
        host_names=[h.name for h in hosts],
        cpus=np.array([h.cpus for h in hosts]),
        ram=np.array([h.ram for h in hosts]),
        capacity=np.array([[h.vcpus_cap, h.ram_cap, h.disk_cap] for h in hosts]).T.reshape(3, -1),
        reserved=reserved,
        usable=np.array([h.usable for h in hosts]),
        dedicated_to=np.array([h.dedicated_to for h in hosts], dtype=np.int64),
        kvm=np.array([h.kvm for h in hosts]),
        iommu=np.zeros(len(hosts), dtype=np.bool_),
        inst_ids=np.arange(101, 101 + len(instances), dtype=np.int64),
        inst_names=[i.name for i in instances],
        host=host,
        cpu=np.array([i.cpu for i in instances], dtype=np.float64),
        ram_demand=np.array([i.ram for i in instances], dtype=np.float64),
        size=size,
        live=np.array([i.live for i in instances], dtype=np.bool_),
        cost=np.array([move_cost(i.live, i.ram_size) for i in instances], dtype=np.float64),
        tenant=np.array([i.tenant for i in instances], dtype=np.int64),
        group=np.array([names.index(i.group) if i.group else -1 for i in instances], dtype=np.int64),
        needs_kvm=np.array([i.needs_kvm for i in instances], dtype=np.bool_),
        needs_iommu=np.zeros(len(instances), dtype=np.bool_),
        ha=np.array([i.ha for i in instances], dtype=np.bool_),
        fixed=[i.fixed for i in instances],
        group_policy=[groups[n] for n in names],
    )


def placement_after(c: Cluster, moves: list[Move]) -> dict[str, str]:
    """Instance name -> host name once ``moves`` are applied."""
    where = {c.inst_names[i]: c.host_names[int(c.host[i])] for i in range(c.m)}
    for move in moves:
        for name in move.names:
            where[name] = move.target_name
    return where
