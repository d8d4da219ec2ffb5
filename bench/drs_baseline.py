"""The Watcher-style greedy baseline of the DRS benchmark (bench/drs.py).

Repeat: take the most loaded host, move its biggest instance (by demand: its dominant share of that
host; or by size, its flavor's share) to the least loaded host it fits on, until the standard
deviation of host load is under the target. "Fits" is the planner's room rule (each of vCPUs, RAM
and disk reservations under the target's capacity after overcommit) plus its other hard rules that
the generated clusters use (usable hosts only, the tenant's dedicated hosts, KVM and IOMMU). When
the biggest instance fits nowhere, the next biggest is tried; when nothing on the hottest host fits
anywhere, it stops. It has no memory: the same instance may move again, and a move may make the
target the new hottest host. Load and deviation are the planner's: each host's dominant-resource
share of its physical capacity, the population standard deviation over usable hosts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.drs import Cluster


@dataclass
class GreedyResult:
    moves: int
    moved_instances: int  # distinct instances among the moves
    std_before: float
    std_after: float
    max_before: float
    max_after: float
    loads_after: list[float]
    stopped: str
    cap_hit: bool
    seconds: float
    host_after: np.ndarray = field(repr=False)
    trajectory: list[float] = field(repr=False, default_factory=list)  # the deviation after each move

    def moves_to_reach(self, std: float) -> int | None:
        """How many of its moves it took to bring the deviation to ``std`` or under (None: never)."""
        if self.std_before <= std + 1e-12:
            return 0
        for k, value in enumerate(self.trajectory, start=1):
            if value <= std + 1e-12:
                return k
        return None

    def best(self) -> tuple[float, int]:
        """The lowest deviation it reached, and after how many moves."""
        if not self.trajectory or min(self.trajectory) >= self.std_before:
            return self.std_before, 0
        k = int(np.argmin(self.trajectory))
        return self.trajectory[k], k + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "moves": self.moves,
            "moved_instances": self.moved_instances,
            "std_before": round(self.std_before, 4),
            "std_after": round(self.std_after, 4),
            "max_before": round(self.max_before, 4),
            "max_after": round(self.max_after, 4),
            "stopped": self.stopped,
            "cap_hit": self.cap_hit,
            "best_std": round(self.best()[0], 4),
            "best_std_after_moves": self.best()[1],
            "seconds": round(self.seconds, 4),
        }


def greedy(cluster: Cluster, target: float, max_moves: int | None = None, by: str = "demand") -> GreedyResult:
    """The Watcher-style pass on ``cluster`` until the deviation is at most ``target``.

    ``max_moves`` caps it (default: the number of instances; ``cap_hit`` says when it stopped there).
    ``by``: what "biggest" means: "demand" (its measured share of the host, the stronger baseline)
    or "size" (its flavor's share: vCPUs or RAM reserved, the issue's words taken literally).
    """
    if by not in ("demand", "size"):
        raise ValueError(f"by is demand or size, not {by!r}")
    started = time.perf_counter()
    c = cluster
    n = c.n
    cap = c.m if max_moves is None else max_moves
    host = c.host.copy()
    cpus = np.maximum(c.cpus, 1e-9)
    ram = np.maximum(c.ram, 1e-9)
    demand = c.demand()
    dcpu, dram = demand[0].copy(), demand[1].copy()
    load = np.maximum(dcpu / cpus, dram / ram)
    reserved = c.reserved.astype(np.float64).copy()
    capacity = c.capacity
    usable = c.usable.copy()
    nb = int(usable.sum())
    movable = np.array([not why for why in c.fixed], dtype=bool) & usable[host]
    on_host: list[list[int]] = [[] for _ in range(n)]
    for i in np.flatnonzero(movable).tolist():
        on_host[int(host[i])].append(i)
    s1 = float(load[usable].sum())
    s2 = float((load[usable] ** 2).sum())

    def std() -> float:
        return math.sqrt(max(s2 / nb - (s1 / nb) ** 2, 0.0)) if nb else 0.0

    std_before = std()
    max_before = float(load[usable].max()) if nb else 0.0
    masked = np.where(usable, load, -np.inf)
    moves = 0
    moved: set[int] = set()
    trajectory: list[float] = []
    stopped = "the deviation is under the target"
    cap_hit = False
    while std() > target:
        if moves >= cap:
            stopped, cap_hit = f"the cap of {cap} moves", True
            break
        s = int(np.argmax(masked))
        # Its instances, biggest demand first (dominant share of this host).
        rows = on_host[s]
        if not rows:
            stopped = "the most loaded host has nothing that may move"
            break
        idx = np.array(rows)
        if by == "demand":
            share = np.maximum(c.cpu[idx] / cpus[s], c.ram_demand[idx] / ram[s])
        else:
            share = np.maximum(c.size[0, idx] / cpus[s], c.size[1, idx] / ram[s])
        order = idx[np.argsort(-share, kind="stable")]
        chosen, target_host = -1, -1
        for i in order.tolist():
            fits = usable & (reserved + c.size[:, i : i + 1] <= capacity + 1e-9).all(axis=0)
            fits &= (c.dedicated_to == 0) | (c.dedicated_to == c.tenant[i])
            if c.needs_kvm[i]:
                fits &= c.kvm
            if c.needs_iommu[i]:
                fits &= c.iommu
            fits[s] = False
            if fits.any():
                chosen, target_host = i, int(np.argmin(np.where(fits, load, np.inf)))
                break
        if chosen < 0:
            stopped = "nothing on the most loaded host fits on another host"
            break
        t = target_host
        dcpu[s] -= c.cpu[chosen]
        dram[s] -= c.ram_demand[chosen]
        dcpu[t] += c.cpu[chosen]
        dram[t] += c.ram_demand[chosen]
        reserved[:, s] -= c.size[:, chosen]
        reserved[:, t] += c.size[:, chosen]
        for h in (s, t):
            new = max(dcpu[h] / cpus[h], dram[h] / ram[h])
            s1 += new - load[h]
            s2 += new * new - load[h] * load[h]
            load[h] = new
            masked[h] = new
        on_host[s].remove(chosen)
        on_host[t].append(chosen)
        host[chosen] = t
        moves += 1
        moved.add(chosen)
        trajectory.append(std())
    return GreedyResult(
        moves=moves,
        moved_instances=len(moved),
        std_before=std_before,
        std_after=float(load[usable].std()) if nb else 0.0,
        max_before=max_before,
        max_after=float(load[usable].max()) if nb else 0.0,
        loads_after=load.tolist(),
        stopped=stopped,
        cap_hit=cap_hit,
        seconds=time.perf_counter() - started,
        host_after=host,
        trajectory=trajectory,
    )
