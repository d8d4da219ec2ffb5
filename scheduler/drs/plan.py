"""The balancing pass: the fewest, cheapest moves that bring host load under the threshold's goals.

The algorithm (greedy on the hottest host, best gain, cheapest among the near-best):

1. Imbalance is the standard deviation of the load of the usable hosts (vSphere's measure); a
   move changes two hosts, so the pass keeps the sums of loads and of their squares and knows the
   deviation after any move in constant time.
2. While the deviation is above the level's target, or a host is above the level's ceiling, take
   the hottest host that still has something to give. For each unit it runs (an instance, or the
   members of a hard-affinity group, which move together) find the coldest hosts that may take it:
   room under overcommit, the tenant's dedicated aggregates, KVM/IOMMU, hard anti-affinity, the HA
   failover reserve. Score each (unit, target) by how much it lowers the sum of squared deviations.
   Moving demand d from a host at load a to one at b lowers it most when d is near (a - b) / 2,
   so the best move neither leaves the hot host hot nor makes the cold one the new hot spot: this
   is what the "biggest instance first" strategy gets wrong, and why it needs more moves.
3. Among the pairs that give at least ``GAIN_SHARE`` of the best gain, take the cheapest (a live
   move of a small VM before a cold restart of a container). Soft (anti-)affinity halves a pair's
   score rather than forbidding it.
4. A move must close the gap it works on by the level's ``min_gain`` (smaller moves are not worth
   a migration). No unit moves twice in a pass, so a move that leaves its target above the level's
   ceiling (what moved in would stay on a host that then needs relief) is scored lower. A host with
   nothing left worth moving is skipped.
5. Once the deviation is within its target, only hosts above the ceiling are worked on: evening out
   the others further would spend migrations without bringing the highest host down.

Each move explains itself: both hosts before and after, why this unit (its demand, its cost, its
share of the best gain), why this target (its rank among the coldest, the colder ones skipped and
why) and the deviation before and after. The plan says why it stopped.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.drs.levels import Threshold
from scheduler.drs.model import Cluster

GAIN_SHARE = 0.98  # pairs within this share of the best gain compete on cost
SCAN = 16  # cold hosts looked at, coldest first, before a full scan for a unit that fits none of them
TARGETS = 3  # feasible targets scored per shortlisted unit (the coldest ones)
OVER_PENALTY = 0.8  # a move that leaves its target above the ceiling: its score is cut this much
SHORTLIST = 4  # units scored against more than their coldest target
SOFT_PENALTY = 0.5  # a soft (anti-)affinity rule broken halves a pair's score
SKIPPED_SHOWN = 3  # colder hosts named, with the reason, in a move's explanation

RES = ("vCPUs", "MiB RAM", "GiB disk")


@dataclass
class Move:
    """One recommendation: these instances (rows of the cluster) from ``source`` to ``target``."""

    rows: list[int]
    instance_ids: list[int]
    names: list[str]
    source: int
    target: int
    source_name: str
    target_name: str
    live: bool
    cost: float
    explanation: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "instances": self.instance_ids,
            "names": self.names,
            "source": self.source_name,
            "target": self.target_name,
            "live": self.live,
            "cost": round(self.cost, 3),
            "explanation": self.explanation,
        }


@dataclass
class Plan:
    """A pass's result: the moves in order and the cluster before and after them."""

    threshold: Threshold
    moves: list[Move]
    loads_before: list[float]
    loads_after: list[float]
    host_names: list[str]
    std_before: float
    std_after: float
    max_before: float
    max_after: float
    bound: float
    ceiling: float
    stopped: str
    even: float = 0.0  # the highest host load evening out can reach (the ceiling's base)
    contention: list[dict[str, Any]] = field(default_factory=list)
    fixed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        """Whether the cluster meets the level's goals after the plan."""
        target = self.threshold.target_std
        return (target is None or self.std_after <= target + 1e-12) and self.max_after <= self.ceiling + 1e-12

    def as_dict(self, moves: bool = True) -> dict[str, Any]:
        """The plan as JSON; ``moves=False`` leaves the moves out (kept elsewhere, one row each)."""
        return {
            "threshold": self.threshold.as_dict(),
            **({"moves": [m.as_dict() for m in self.moves]} if moves else {}),
            "hosts": [
                {"host": name, "before": round(b, 4), "after": round(a, 4)}
                for name, b, a in zip(self.host_names, self.loads_before, self.loads_after, strict=True)
            ],
            "std_before": round(self.std_before, 4),
            "std_after": round(self.std_after, 4),
            "max_before": round(self.max_before, 4),
            "max_after": round(self.max_after, 4),
            "bound": round(self.bound, 4),
            "even": round(self.even, 4),
            "ceiling": round(self.ceiling, 4),
            "balanced": self.balanced,
            "stopped": self.stopped,
            "contention": self.contention,
            "fixed": self.fixed,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class _Unit:
    rows: list[int]
    host: int
    cpu: float
    ram: float
    size: tuple[float, float, float]
    ha_size: tuple[float, float, float]
    cost: float
    live: bool
    tenant: int
    needs_kvm: bool
    needs_iommu: bool
    groups: list[int]  # every server group of its members


def _pct(x: float) -> str:
    return f"{x:.0%}"


class _Pass:
    """The mutable state of one pass (plain lists: a pass makes thousands of tiny updates)."""

    def __init__(self, c: Cluster, t: Threshold, moved_recently: frozenset[int]) -> None:
        self.c, self.t = c, t
        self.bound = c.bound()
        self.even = c.even(self.bound)
        self.ceiling = t.ceiling(self.even)
        n = c.n
        demand = c.demand()
        self.dcpu, self.dram = demand[0].tolist(), demand[1].tolist()
        self.ccpu = np.maximum(c.cpus, 1e-9).tolist()
        self.cram = np.maximum(c.ram, 1e-9).tolist()
        # The smallest host's CPUs and RAM: where an instance weighs most (see ``best_from``).
        self.least_cpus, self.least_ram = min(self.ccpu, default=1.0), min(self.cram, default=1.0)
        self.res = c.reserved.T.tolist()  # per host [v, r, d]
        self.cap = c.capacity.T.tolist()
        self.usable = c.usable.tolist()
        self.dedicated = c.dedicated_to.tolist()
        self.kvm, self.iommu = c.kvm.tolist(), c.iommu.tolist()
        self.load = [max(self.dcpu[h] / self.ccpu[h], self.dram[h] / self.cram[h]) for h in range(n)]
        self.nb = sum(self.usable)
        self.s1 = sum(self.load[h] for h in range(n) if self.usable[h])
        self.s2 = sum(self.load[h] ** 2 for h in range(n) if self.usable[h])
        self.group_policy = c.group_policy
        self.inst_host, self.inst_group = c.host.tolist(), c.group.tolist()
        self.inst_cpu, self.inst_ram = c.cpu.tolist(), c.ram_demand.tolist()
        self.inst_size = c.size.T.tolist()
        self.inst_ha, self.inst_live, self.inst_cost = c.ha.tolist(), c.live.tolist(), c.cost.tolist()
        self.inst_tenant = c.tenant.tolist()
        self.inst_kvm, self.inst_iommu = c.needs_kvm.tolist(), c.needs_iommu.tolist()
        self.any_ha = bool(c.ha.any())
        self.members: dict[int, Counter[int]] = {}
        for i, g in enumerate(c.group.tolist()):
            if g >= 0:
                self.members.setdefault(g, Counter())[int(c.host[i])] += 1
        # The HA failover reserve: each host's HA instances must fit in the room of the others.
        self.ha = [[0.0, 0.0, 0.0] for _ in range(n)]
        ha_rows = np.flatnonzero(c.ha)
        for i in ha_rows.tolist():
            h = int(c.host[i])
            for r in range(3):
                self.ha[h][r] += float(c.size[r, i])
        self.free_total = [
            sum(self.cap[h][r] - self.res[h][r] for h in range(n) if self.usable[h]) for r in range(3)
        ]
        self.scale = [max(float(c.capacity[r, c.usable].sum()), 1.0) for r in range(3)]
        self.unit_rows, self.fixed = self._units(moved_recently)
        self.made: dict[int, _Unit] = {}
        self.on_host: dict[int, list[int]] = {}
        for k, rows in enumerate(self.unit_rows):
            self.on_host.setdefault(self.inst_host[rows[0]], []).append(k)
        self.hot = [(-self.load[h], h) for h in range(n) if self.usable[h] and h in self.on_host]
        heapq.heapify(self.hot)
        self.cold = [(self.load[h], h) for h in range(n) if self.usable[h]]
        heapq.heapify(self.cold)
        self.peak = [(-self.load[h], h) for h in range(n) if self.usable[h]]
        heapq.heapify(self.peak)
        self.done: set[int] = set()  # hosts with nothing left worth moving
        # Column copies for the rare full scan (kept in step by ``apply``).
        self.usable_np, self.dedicated_np = c.usable, c.dedicated_to
        self.res_np, self.cap_np = c.reserved.astype(np.float64), c.capacity
        self.load_np = np.array(self.load)

    # -- units -------------------------------------------------------------------------------------
    def _units(self, moved_recently: frozenset[int]) -> tuple[list[list[int]], Counter[str]]:
        """The rows of each unit that may move, and how many instances may not, by reason."""
        c = self.c
        fixed: Counter[str] = Counter()
        reason = list(c.fixed)
        ids = c.inst_ids.tolist()
        hosts = self.inst_host
        groups = self.inst_group
        for i in range(c.m):
            if reason[i]:
                continue
            if moved_recently and ids[i] in moved_recently:
                reason[i] = "moved within the cooldown"
            elif not self.usable[hosts[i]]:
                reason[i] = "its host is not usable (maintenance or down): evacuation and HA move it"
        # Hard affinity: the members on one host move together; a group split over hosts stays.
        together: dict[tuple[int, int], list[int]] = {}
        for g in {g for g, policy in enumerate(self.group_policy) if policy == "affinity"}:
            for i in np.flatnonzero(c.group == g).tolist():
                together.setdefault((g, hosts[i]), []).append(i)
        for (g, _h), rows in together.items():
            split = len(self.members[g]) > 1
            blocked = any(reason[i] for i in rows)
            for i in rows:
                if split:
                    reason[i] = reason[i] or "its hard-affinity group runs on several hosts"
                elif blocked:
                    reason[i] = reason[i] or "another member of its hard-affinity group may not move"
        units: list[list[int]] = []
        seen: set[int] = set()
        for i in range(c.m):
            if reason[i]:
                fixed[reason[i]] += 1
            elif i not in seen:
                g = groups[i]
                rows = together.get((g, hosts[i]), [i]) if g >= 0 else [i]
                if len(rows) > 1:
                    seen.update(rows)
                units.append(rows)
        return units, fixed

    def unit(self, k: int) -> _Unit:
        """Unit ``k``, made on first use (a pass looks at the units of a few hot hosts only)."""
        u = self.made.get(k)
        if u is not None:
            return u
        rows = self.unit_rows[k]
        c = self.c
        if len(rows) == 1:  # the common case, without the sums
            i = rows[0]
            size1 = self.inst_size[i]
            g = self.inst_group[i]
            u = _Unit(
                rows=rows,
                host=self.inst_host[i],
                cpu=self.inst_cpu[i],
                ram=self.inst_ram[i],
                size=(size1[0], size1[1], size1[2]),
                ha_size=(size1[0], size1[1], size1[2]) if self.inst_ha[i] else (0.0, 0.0, 0.0),
                cost=self.inst_cost[i],
                live=self.inst_live[i],
                tenant=self.inst_tenant[i],
                needs_kvm=self.inst_kvm[i],
                needs_iommu=self.inst_iommu[i],
                groups=[g] if g >= 0 else [],
            )
            self.made[k] = u
            return u
        size = [0.0, 0.0, 0.0]
        ha = [0.0, 0.0, 0.0]
        for i in rows:
            for r in range(3):
                size[r] += self.inst_size[i][r]
                if self.inst_ha[i]:
                    ha[r] += self.inst_size[i][r]
        u = _Unit(
            rows=rows,
            host=self.inst_host[rows[0]],
            cpu=sum(self.inst_cpu[i] for i in rows),
            ram=sum(self.inst_ram[i] for i in rows),
            size=(size[0], size[1], size[2]),
            ha_size=(ha[0], ha[1], ha[2]),
            cost=sum(self.inst_cost[i] for i in rows),
            live=all(self.inst_live[i] for i in rows),
            tenant=int(c.tenant[rows[0]]),
            needs_kvm=any(bool(c.needs_kvm[i]) for i in rows),
            needs_iommu=any(bool(c.needs_iommu[i]) for i in rows),
            groups=sorted({self.inst_group[i] for i in rows if self.inst_group[i] >= 0}),
        )
        self.made[k] = u
        return u

    # -- measures ----------------------------------------------------------------------------------
    def std(self) -> float:
        if self.nb == 0:
            return 0.0
        return math.sqrt(max(self.s2 / self.nb - (self.s1 / self.nb) ** 2, 0.0))

    def hottest(self) -> int | None:
        """The hottest usable host that still has something worth moving (lazy heap)."""
        while self.hot:
            neg, h = self.hot[0]
            if -neg != self.load[h] or h in self.done or not self.on_host.get(h):
                heapq.heappop(self.hot)
                continue
            return h
        return None

    def max_load(self) -> float:
        """The highest usable host load (lazy heap: stale entries are dropped as they surface)."""
        while self.peak and -self.peak[0][0] != self.load[self.peak[0][1]]:
            heapq.heappop(self.peak)
        return -self.peak[0][0] if self.peak else 0.0

    def after(self, u: _Unit, s: int, t: int) -> tuple[float, float]:
        ls = max((self.dcpu[s] - u.cpu) / self.ccpu[s], (self.dram[s] - u.ram) / self.cram[s])
        lt = max((self.dcpu[t] + u.cpu) / self.ccpu[t], (self.dram[t] + u.ram) / self.cram[t])
        return ls, lt

    def spread_after(self, s: int, t: int, ls: float, lt: float) -> float:
        """The sum of squared deviations after ``s`` and ``t`` take loads ``ls`` and ``lt``."""
        s1 = self.s1 - self.load[s] - self.load[t] + ls + lt
        s2 = self.s2 - self.load[s] ** 2 - self.load[t] ** 2 + ls * ls + lt * lt
        return s2 - s1 * s1 / self.nb

    # -- targets -----------------------------------------------------------------------------------
    def refusal(self, u: _Unit, t: int) -> str:
        """Why ``t`` may not take ``u`` ("" when it may)."""
        if not self.usable[t]:
            return "not usable"
        if t == u.host:
            return "its own host"
        res, cap = self.res[t], self.cap[t]
        for r in range(3):
            if res[r] + u.size[r] > cap[r] + 1e-9:
                return f"no room ({u.size[r] - (cap[r] - res[r]):g} {RES[r]} short)"
        if self.dedicated[t] and self.dedicated[t] != u.tenant:
            return "dedicated to another tenant"
        if u.needs_kvm and not self.kvm[t]:
            return "no working KVM"
        if u.needs_iommu and not self.iommu[t]:
            return "no IOMMU"
        for g in u.groups:
            if self.group_policy[g] == "anti-affinity" and self.members[g].get(t):
                return "runs a member of its anti-affinity group"
        return ""

    def _shortfall(self, h: int, ha: list[float], free_h: list[float]) -> float:
        return sum(max(0.0, ha[r] - (self.free_total[r] - free_h[r])) / self.scale[r] for r in range(3))

    def ha_blocks(self, u: _Unit) -> bool:
        """Whether moving ``u`` off its host would leave that host's HA instances less room to
        restart on the other hosts (they must fit in the free room of the rest of the cluster).

        Wherever ``u`` goes, the rest of the cluster loses the room its non-HA part takes; the
        target never gets worse (its HA instances gain what it takes from the others). So the rule
        is the source's alone, and the same for every target.
        """
        s = u.host
        if not self.any_ha or not any(self.ha[s]):
            return False
        if all(u.size[r] - u.ha_size[r] <= 1e-12 for r in range(3)):
            return False
        free = [self.cap[s][r] - self.res[s][r] for r in range(3)]
        before = self._shortfall(s, self.ha[s], free)
        ha_after = [self.ha[s][r] - u.ha_size[r] for r in range(3)]
        free_after = [free[r] + u.size[r] for r in range(3)]
        return self._shortfall(s, ha_after, free_after) > before + 1e-12

    def coldest(self) -> list[int]:
        """Up to SCAN usable hosts, coldest first (popped from the lazy heap and pushed back)."""
        out: list[int] = []
        popped: list[tuple[float, int]] = []
        while self.cold and len(out) < SCAN:
            entry = heapq.heappop(self.cold)
            load, h = entry
            if load != self.load[h]:
                continue  # stale: the host's current entry is elsewhere in the heap
            popped.append(entry)
            out.append(h)
        for entry in popped:
            heapq.heappush(self.cold, entry)
        return out

    def targets(self, u: _Unit, cold: list[int], want: int) -> tuple[list[int], list[tuple[int, str]]]:
        """The coldest ``want`` hosts that may take ``u``, and the colder ones skipped, with why."""
        found: list[int] = []
        skipped: list[tuple[int, str]] = []
        for t in cold:
            why = self.refusal(u, t)
            if not why:
                found.append(t)
                if len(found) == want:
                    return found, skipped
            elif t != u.host and len(skipped) < SKIPPED_SHOWN and not found:
                skipped.append((t, why))
        if len(found) < want and len(cold) >= SCAN:  # the scanned hosts were not enough
            found += self._scan(u, set(cold), want - len(found))
        return found, skipped

    def _scan(self, u: _Unit, seen: set[int], want: int) -> list[int]:
        """The coldest hosts beyond ``seen`` that may take ``u``: room, aggregate and capability as
        one vectorised mask over every host, the other rules checked on the few coldest of those."""
        fits = self.usable_np & ((self.dedicated_np == 0) | (self.dedicated_np == u.tenant))
        fits &= (self.res_np + np.array(u.size)[:, None] <= self.cap_np + 1e-9).all(axis=0)
        if u.needs_kvm:
            fits &= self.c.kvm
        if u.needs_iommu:
            fits &= self.c.iommu
        rows = np.flatnonzero(fits)
        rows = rows[np.argsort(self.load_np[rows], kind="stable")]
        found: list[int] = []
        for t in rows.tolist():
            if t not in seen and not self.refusal(u, t):
                found.append(t)
                if len(found) == want:
                    break
        return found

    # -- moves -------------------------------------------------------------------------------------
    def soft_broken(self, u: _Unit, s: int, t: int) -> str:
        for g in u.groups:
            policy = self.group_policy[g]
            if policy == "soft-anti-affinity" and self.members[g].get(t):
                return "puts it with a member of its soft anti-affinity group"
            if policy == "soft-affinity" and self.members[g].get(s, 0) > sum(
                1 for i in u.rows if int(self.c.group[i]) == g
            ):
                return "takes it away from its soft-affinity group"
        return ""

    def _pair(
        self, spread: float, k: int, s: int, t: int, skipped: list[tuple[int, str]]
    ) -> tuple[float, float, int, int, float, float, str, list[tuple[int, str]]] | None:
        """Unit ``k`` from ``s`` to ``t`` scored: (score, gain, k, t, loads after, soft rule, skipped)."""
        u = self.unit(k)
        ls, lt = self.after(u, s, t)
        if self.load[s] - self.load[t] - abs(ls - lt) < self.t.min_gain - 1e-12:
            return None
        gain = spread - self.spread_after(s, t, ls, lt)
        if gain <= 1e-12:
            return None
        soft = self.soft_broken(u, s, t)
        score = gain * (SOFT_PENALTY if soft else 1.0)
        if lt > self.ceiling + 1e-12:
            # The target would need relief itself, and what moved in stays there this pass: taken
            # when no move under the ceiling comes close (a large instance, say).
            score *= OVER_PENALTY
        return (score, gain, k, t, ls, lt, soft, skipped)

    def best_from(self, s: int) -> tuple[Any, ...] | None:
        """The move to make off host ``s`` (None: nothing on it is worth moving).

        Every unit is scored against the coldest host that may take it; the SHORTLIST best are
        scored against the next TARGETS - 1 too (on hosts of different sizes the coldest is not
        always the best target), so a host of many units costs one fit check per unit.
        """
        spread = self.s2 - self.s1 * self.s1 / self.nb
        cold = self.coldest()
        pairs = []
        # A move closes the gap between two hosts by at most the unit's share of the source plus
        # its share of the target (at most its share of the smallest host): a unit too small for
        # the level's min_gain that way is not worth scoring, whatever the target.
        least = self.t.min_gain - 1e-12
        ccpu, cram = self.ccpu[s], self.cram[s]
        coldest = cold[0] if cold else -1
        for k in self.on_host.get(s, []):
            u = self.unit(k)
            if max(u.cpu / ccpu, u.ram / cram) + max(u.cpu / self.least_cpus, u.ram / self.least_ram) < least:
                continue
            if self.ha_blocks(u):
                continue  # leaving would eat into the failover room of its host's HA instances
            skipped: list[tuple[int, str]] = []
            if coldest >= 0 and not self.refusal(u, coldest):
                t = coldest  # the common case, without the search
            else:
                found, skipped = self.targets(u, cold, 1)
                if not found:
                    continue
                t = found[0]
            if (pair := self._pair(spread, k, s, t, skipped)) is not None:
                pairs.append(pair)
        if not pairs:
            return None
        pairs.sort(key=lambda p: -p[0])
        for first in pairs[:SHORTLIST]:
            k = first[2]
            found, _skipped = self.targets(self.unit(k), cold, TARGETS)
            for t in found[1:]:
                if (pair := self._pair(spread, k, s, t, [])) is not None:
                    pairs.append(pair)
        best = max(p[0] for p in pairs)
        near = [p for p in pairs if p[0] >= GAIN_SHARE * best]
        chosen = min(near, key=lambda p: (self.unit(p[2]).cost, -p[0], p[2], p[3]))
        return (*chosen, best, len(pairs), len(near))

    def apply(self, k: int, t: int, ls: float, lt: float) -> None:
        u = self.unit(k)
        s = u.host
        for h, new in ((s, ls), (t, lt)):
            old = self.load[h]
            self.s1 += new - old
            self.s2 += new * new - old * old
            self.load[h] = new
            self.load_np[h] = new
        self.dcpu[s] -= u.cpu
        self.dram[s] -= u.ram
        self.dcpu[t] += u.cpu
        self.dram[t] += u.ram
        for r in range(3):
            self.res[s][r] -= u.size[r]
            self.res[t][r] += u.size[r]
            self.res_np[r, s] -= u.size[r]
            self.res_np[r, t] += u.size[r]
            self.ha[s][r] -= u.ha_size[r]
            self.ha[t][r] += u.ha_size[r]
        for i in u.rows:
            g = int(self.c.group[i])
            if g >= 0:
                self.members[g][s] -= 1
                self.members[g][t] += 1
        self.on_host[s].remove(k)
        u.host = t  # it moved: not a candidate again this pass (not put on t's list)
        heapq.heappush(self.hot, (-ls, s))
        heapq.heappush(self.hot, (-lt, t))
        heapq.heappush(self.cold, (ls, s))
        heapq.heappush(self.cold, (lt, t))
        heapq.heappush(self.peak, (-ls, s))
        heapq.heappush(self.peak, (-lt, t))


def _host_view(p: _Pass, h: int, load: float, cpu: float, ram: float) -> dict[str, Any]:
    return {
        "host": p.c.host_names[h],
        "load": round(load, 4),
        "cpu": round(cpu / p.ccpu[h], 4),
        "ram": round(ram / p.cram[h], 4),
    }


def _explain(p: _Pass, choice: tuple[Any, ...], std_before: float, max_before: float) -> dict[str, Any]:
    score, _gain, k, t, ls, lt, soft, skipped, best, pairs, near = choice
    u = p.unit(k)
    s = u.host
    c = p.c
    members = [
        {
            "id": int(c.inst_ids[i]),
            "name": c.inst_names[i],
            "cpu": round(float(c.cpu[i]), 3),
            "ram_mib": round(float(c.ram_demand[i]), 1),
            "move": "live" if c.live[i] else "cold",
        }
        for i in u.rows
    ]
    source_before = _host_view(p, s, p.load[s], p.dcpu[s], p.dram[s])
    target_before = _host_view(p, t, p.load[t], p.dcpu[t], p.dram[t])
    source_after = _host_view(p, s, ls, p.dcpu[s] - u.cpu, p.dram[s] - u.ram)
    target_after = _host_view(p, t, lt, p.dcpu[t] + u.cpu, p.dram[t] + u.ram)
    share = max(u.cpu / p.ccpu[s], u.ram / p.cram[s])
    kind = "live" if u.live else "cold (stop, then start on the target)"
    why_instance = (
        f"its demand ({u.cpu:.2f} CPUs, {u.ram:.0f} MiB) is {_pct(share)} of {c.host_names[s]}, the hottest "
        f"host with something to give; moving it gives {_pct(score / best if best else 1)} of the best gain "
        f"of {pairs} candidate moves, and at cost {u.cost:.2f} ({kind}) it is the cheapest of the {near} "
        f"within {_pct(GAIN_SHARE)} of the best"
    )
    why_target = f"the coldest host that may take it ({c.host_names[t]} at {_pct(p.load[t])})"
    if skipped:
        why_target += "; colder hosts skipped: " + "; ".join(
            f"{c.host_names[h]}: {why}" for h, why in skipped
        )
    if soft:
        why_target += f"; it {soft} (a soft rule: allowed, scored lower)"
    return {
        "instances": members,
        "move": "live" if u.live else "cold",
        "cost": round(u.cost, 3),
        "source": {"before": source_before, "after": source_after},
        "target": {"before": target_before, "after": target_after},
        "why_instance": why_instance,
        "why_target": why_target,
        "std_before": round(std_before, 4),
        "max_before": round(max_before, 4),
    }


def plan(
    cluster: Cluster,
    threshold: Threshold,
    *,
    max_moves: int | None = None,
    moved_recently: frozenset[int] = frozenset(),
    explain: bool = True,
) -> Plan:
    """The moves that balance ``cluster`` for ``threshold`` (nothing is moved: a plan).

    ``max_moves`` caps the plan (None: no cap); ``moved_recently``: instance ids that moved within
    the cooldown and stay where they are. ``explain=False`` leaves the explanations out (the
    benchmark at 10,000 hosts; a real pass always explains).
    """
    # A pass makes many small objects and frees none until it ends: the cyclic garbage collector
    # would only walk them again and again (a third of the time at 10,000 hosts).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _plan(cluster, threshold, max_moves, moved_recently, explain)
    finally:
        if collecting:
            gc.enable()


def _plan(
    cluster: Cluster,
    threshold: Threshold,
    max_moves: int | None,
    moved_recently: frozenset[int],
    explain: bool,
) -> Plan:
    started = time.perf_counter()
    p = _Pass(cluster, threshold, moved_recently)
    loads_before = list(p.load)
    std_before, max_before = p.std(), p.max_load()
    bound, ceiling = p.bound, p.ceiling
    target = threshold.target_std
    moves: list[Move] = []
    stopped = "balanced: the deviation and every host are within the level's goals"
    while True:
        std, top = p.std(), p.max_load()
        if (target is None or std <= target) and top <= ceiling:
            break
        if max_moves is not None and len(moves) >= max_moves:
            stopped = f"the pass's cap of {max_moves} moves"
            break
        s = p.hottest()
        if s is None or p.load[s] <= p.s1 / max(p.nb, 1):
            stopped = "no move improves the balance (what is left cannot move, fit or help)"
            break
        if (target is None or std <= target) and p.load[s] <= ceiling:
            # Only hosts above the ceiling are left to relieve, and none of them can give.
            stopped = "the hosts above the ceiling have nothing that may move, fit or help"
            break
        choice = p.best_from(s)
        if choice is None:
            p.done.add(s)
            continue
        k, t, ls, lt = choice[2], choice[3], choice[4], choice[5]
        u = p.unit(k)
        explanation = _explain(p, choice, std, top) if explain else {}
        rows = list(u.rows)
        p.apply(k, t, ls, lt)
        if explain:  # the whole cluster after this move
            explanation["std_after"], explanation["max_after"] = round(p.std(), 4), round(p.max_load(), 4)
        moves.append(
            Move(
                rows=rows,
                instance_ids=[int(cluster.inst_ids[i]) for i in rows],
                names=[cluster.inst_names[i] for i in rows],
                source=s,
                target=t,
                source_name=cluster.host_names[s],
                target_name=cluster.host_names[t],
                live=u.live,
                cost=u.cost,
                explanation=explanation,
            )
        )
    contended = cluster.contended()
    contention = [
        {
            "instance": int(cluster.inst_ids[i]),
            "name": cluster.inst_names[i],
            "host": cluster.host_names[int(cluster.host[i])],
            "reason": why,
        }
        for i, why in enumerate(contended)
        if why
    ]
    return Plan(
        threshold=threshold,
        moves=moves,
        loads_before=loads_before,
        loads_after=list(p.load),
        host_names=list(cluster.host_names),
        std_before=std_before,
        std_after=p.std(),
        max_before=max_before,
        max_after=p.max_load(),
        bound=bound,
        ceiling=ceiling,
        even=p.even,
        stopped=stopped,
        contention=contention,
        fixed=dict(p.fixed),
        seconds=time.perf_counter() - started,
    )
