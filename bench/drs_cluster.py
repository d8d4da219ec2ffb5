"""Generated clusters for the DRS benchmark (bench/drs.py): hosts, placed instances, measured demand.

Everything comes from one seed. Hosts are of a few real shapes (CPUs, RAM, disk) with the portal's
overcommit (4x CPU, 1x RAM, 1x disk). Instances take flavors from a list weighted toward small
ones and are placed as a scheduler would have placed them: each host is filled, flavor by flavor,
up to a share of its RAM drawn per host, and never past its capacity under overcommit (vCPUs, RAM
and disk reservations all fit). Seven in ten are VMs (live moves), the rest containers (cold moves),
each with ``move_cost``. Measured demand is below each instance's size: CPU used is its vCPUs times
a utilisation in [0, 1]; memory used is 35% to 85% of its RAM, rising with the utilisation.

"Skewed" makes a share of the hosts hot (their instances busy: utilisation Beta(5, 4), mean 0.56)
and the rest cool (Beta(2, 8), mean 0.2). "Balanced" is the same cluster (hosts, instances, sizes,
placement) with every instance's utilisation drawn from one distribution of the skewed case's mean
(Beta with a + b = 10): the same total demand, spread evenly, with the noise of real workloads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scheduler.drs import Cluster, move_cost

GIB = 1024.0

# Host shapes: physical CPUs, RAM GiB, disk GiB, share of the hosts.
HOST_SHAPES: tuple[tuple[int, int, int, float], ...] = (
    (32, 128, 1920, 0.3),
    (48, 256, 3840, 0.5),
    (64, 512, 7680, 0.2),
)
# Flavors: vCPUs, RAM GiB, disk GiB, weight (mostly small).
FLAVORS: tuple[tuple[int, int, int, float], ...] = (
    (1, 2, 20, 0.25),
    (2, 4, 40, 0.25),
    (2, 8, 40, 0.15),
    (4, 8, 80, 0.12),
    (4, 16, 80, 0.10),
    (8, 16, 160, 0.05),
    (8, 32, 160, 0.05),
    (16, 64, 320, 0.03),
)
# The same flavors weighted toward the big ones (a sweep: big instances against host size).
LARGE_FLAVORS: tuple[tuple[int, int, int, float], ...] = tuple(
    (v, r, d, w)
    for (v, r, d, _), w in zip(FLAVORS, (0.05, 0.05, 0.05, 0.10, 0.15, 0.20, 0.20, 0.20), strict=True)
)
OVERCOMMIT = (4.0, 1.0, 1.0)  # vCPUs, RAM, disk


@dataclass(frozen=True)
class Spec:
    """What to generate. ``fill``: each host's RAM reservations are filled up to a share drawn
    uniformly in this range. ``hot_share``: the share of hosts that run hot in the skewed case;
    ``hot_util`` / ``cool_util``: Beta(a, b) of the instances' CPU utilisation on hot and cool hosts.
    ``balanced_concentration``: a + b of the balanced case's Beta.
    ``cpu_bound``: clamp each instance's memory demand so its RAM share is below its CPU share on any
    host (all hosts of one shape): a host's load is then its CPU share, whatever the placement (the
    MILP clusters)."""

    hosts: int
    seed: int = 1
    shapes: tuple[tuple[int, int, int, float], ...] = HOST_SHAPES
    flavors: tuple[tuple[int, int, int, float], ...] = FLAVORS
    fill: tuple[float, float] = (0.60, 0.85)
    live_share: float = 0.7
    hot_share: float = 0.2
    hot_util: tuple[float, float] = (5.0, 4.0)
    cool_util: tuple[float, float] = (2.0, 8.0)
    balanced_concentration: float = 10.0
    cpu_bound: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shapes"] = [{"cpus": c, "ram_gib": r, "disk_gib": d, "share": s} for c, r, d, s in self.shapes]
        out["flavors"] = [
            {"vcpus": v, "ram_gib": r, "disk_gib": d, "weight": w} for v, r, d, w in self.flavors
        ]
        return out


@dataclass
class Generated:
    """A skewed cluster and its balanced twin (same hosts, instances, sizes; demand spread evenly)."""

    spec: Spec
    skewed: Cluster
    balanced: Cluster
    hot: np.ndarray  # which hosts run hot in the skewed case

    def facts(self) -> dict[str, Any]:
        c = self.skewed
        per_host = np.bincount(c.host, minlength=c.n)
        size = c.size
        vshare = np.bincount(c.host, weights=size[0], minlength=c.n) / c.cpus
        rshare = np.bincount(c.host, weights=size[1], minlength=c.n) / c.ram
        return {
            "hosts": c.n,
            "instances": c.m,
            "instances_per_host": {
                "min": int(per_host.min()),
                "mean": round(float(per_host.mean()), 1),
                "max": int(per_host.max()),
            },
            "live_share": round(float(c.live.mean()), 3),
            "hot_hosts": int(self.hot.sum()),
            "vcpus_per_cpu_reserved_mean": round(float(vshare.mean()), 3),
            "ram_reserved_share_mean": round(float(rshare.mean()), 3),
            "largest_instance_share": round(float(c.instance_share().max()), 3),
        }


def _draw_flavors(
    rng: np.random.Generator, flavors: tuple[tuple[int, int, int, float], ...], shape: tuple[int, ...]
) -> np.ndarray:
    weights = np.array([f[3] for f in flavors], dtype=float)
    return rng.choice(len(flavors), size=shape, p=weights / weights.sum())


def generate(spec: Spec) -> Generated:
    """The skewed cluster of ``spec`` and its balanced twin."""
    rng = np.random.default_rng(spec.seed)
    n = spec.hosts
    shares = np.array([s[3] for s in spec.shapes], dtype=float)
    shape = rng.choice(len(spec.shapes), size=n, p=shares / shares.sum())
    cpus = np.array([spec.shapes[k][0] for k in shape], dtype=float)
    ram = np.array([spec.shapes[k][1] for k in shape], dtype=float) * GIB
    disk = np.array([spec.shapes[k][2] for k in shape], dtype=float)
    capacity = np.vstack([cpus * OVERCOMMIT[0], ram * OVERCOMMIT[1], disk * OVERCOMMIT[2]])

    # Place: per host, a sequence of flavors; keep the longest prefix that fits under the host's
    # RAM fill target and its capacity in every resource (a prefix: the sums only grow).
    fl = np.array([f[:3] for f in spec.flavors], dtype=float)  # vcpus, ram GiB, disk GiB
    smallest_ram = float(fl[:, 1].min())
    depth = int(np.ceil(float(ram.max()) / GIB * spec.fill[1] / smallest_ram)) + 1
    draws = _draw_flavors(rng, spec.flavors, (n, depth))
    fill = rng.uniform(spec.fill[0], spec.fill[1], size=n)
    vc = np.cumsum(fl[draws, 0], axis=1)
    rc = np.cumsum(fl[draws, 1] * GIB, axis=1)
    dc = np.cumsum(fl[draws, 2], axis=1)
    keep = (
        (rc <= (fill * ram)[:, None] + 1e-9)
        & (vc <= capacity[0][:, None] + 1e-9)
        & (rc <= capacity[1][:, None] + 1e-9)
        & (dc <= capacity[2][:, None] + 1e-9)
    )
    keep = np.cumprod(keep, axis=1).astype(bool)  # the prefix
    host, slot = np.nonzero(keep)
    flavor = draws[host, slot]
    m = len(host)
    size = np.vstack([fl[flavor, 0], fl[flavor, 1] * GIB, fl[flavor, 2]])
    reserved = np.vstack([np.bincount(host, weights=size[r], minlength=n) for r in range(3)]).astype(
        np.float64
    )
    if (reserved > capacity + 1e-6).any():  # the prefix rule makes this impossible
        raise AssertionError("a host's reservations exceed its capacity")

    live = rng.random(m) < spec.live_share
    cost = np.array(
        [move_cost(bool(lv), float(r)) for lv, r in zip(live.tolist(), size[1].tolist(), strict=True)]
    )

    hot = rng.random(n) < spec.hot_share
    if spec.hot_share > 0 and not hot.any():
        hot[rng.integers(n)] = True
    util = np.where(hot[host], rng.beta(*spec.hot_util, size=m), rng.beta(*spec.cool_util, size=m))
    noise = rng.beta(2.0, 2.0, size=m)
    # Balanced: every instance's utilisation from one distribution with the skewed case's mean
    # (weighted by vCPUs, so the total CPU demand is about the same), none hot, none idle.
    mean = float(np.average(util, weights=size[0])) if m else 0.0
    k = spec.balanced_concentration
    balanced_util = rng.beta(mean * k, (1 - mean) * k, size=m)
    balanced_noise = rng.beta(2.0, 2.0, size=m)

    def demand(u: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cpu = size[0] * u
        mem = size[1] * (0.35 + 0.5 * (0.5 * u + 0.5 * z))
        if spec.cpu_bound:  # a RAM share below the CPU share on any host of the (one) shape
            per_cpu = float(ram.max() / cpus.min())
            mem = np.minimum(mem, 0.95 * cpu * per_cpu)
        return cpu, mem

    cpu_s, ram_s = demand(util, noise)
    cpu_b, ram_b = demand(balanced_util, balanced_noise)

    def cluster(cpu: np.ndarray, mem: np.ndarray) -> Cluster:
        return Cluster(
            host_ids=np.arange(1, n + 1, dtype=np.int64),
            host_names=[f"h{h:05d}" for h in range(n)],
            cpus=cpus.copy(),
            ram=ram.copy(),
            capacity=capacity.copy(),
            reserved=reserved.copy(),
            usable=np.ones(n, dtype=bool),
            dedicated_to=np.zeros(n, dtype=np.int64),
            kvm=np.ones(n, dtype=bool),
            iommu=np.zeros(n, dtype=bool),
            inst_ids=np.arange(1, m + 1, dtype=np.int64),
            inst_names=[f"i{i:07d}" for i in range(m)],
            host=host.astype(np.int64),
            cpu=cpu,
            ram_demand=mem,
            size=size.copy(),
            live=live.copy(),
            cost=cost.copy(),
            tenant=np.zeros(m, dtype=np.int64),
            group=np.full(m, -1, dtype=np.int64),
            needs_kvm=live.copy(),
            needs_iommu=np.zeros(m, dtype=bool),
            ha=np.zeros(m, dtype=bool),
            fixed=[""] * m,
        )

    return Generated(spec=spec, skewed=cluster(cpu_s, ram_s), balanced=cluster(cpu_b, ram_b), hot=hot)


def milp_spec(hosts: int, seed: int = 1, hot_share: float = 0.3) -> Spec:
    """Small clusters for the MILP: one host shape (16 CPUs, 64 GiB), flavors up to 8 vCPUs / 32 GiB
    (a few instances per host), memory demand clamped so CPU is every host's dominant resource."""
    return Spec(
        hosts=hosts,
        seed=seed,
        shapes=((16, 64, 1000, 1.0),),
        flavors=tuple(f for f in FLAVORS if f[1] <= 32),
        hot_share=hot_share,
        cpu_bound=True,
    )
