"""The cloud during a run: the host table, what runs where, the queue, and the simulated hosts' drivers."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import numpy as np
import numpy.typing as npt

from compute.drivers.base import GuestSpec
from compute.drivers.sim import SimHost, SimulatorDriver
from scheduler.engine import RESOURCES, Engine, HostTable, Request
from scheduler.queueing import QueuePolicy, Waiting, admission_pass
from scheduler.simulate.report import Quality
from scheduler.simulate.trace import PRIORITY_NAMES, Arrival, Floats, Trace

DOMAIN_PREFIX = "sim-"  # simulated guests' names: never a real cloud's prefix
# Causes of refusals and queueing that are no filter's (keys of the report's per-filter counts),
# as scheduler.admission and instance_create decide them.
NEVER_FITS = "never fits"  # Engine.never_fits: no host could ever take it, so it fails even if it may wait
# May not wait, and the hosts with room are held for an overdue request (the engine's "held" step).
HELD_FOR_OVERDUE = "held"
BEHIND_THE_QUEUE = "behind the queue"  # may wait, and others already wait: it joins them


class SimState:
    """The cloud during a run; an observer passed to ``Simulator.run`` sees it after every event."""

    def __init__(self, trace: Trace, engine: Engine, policy: QueuePolicy, give_up: float | None) -> None:
        self.trace, self.engine, self.policy, self.give_up = trace, engine, policy, give_up
        self.now = 0.0
        self.table = HostTable(trace.rows())
        self.simulated = np.array([h.id not in trace.real_hosts for h in trace.hosts], dtype=np.bool_)
        inst = trace.instances
        # Rows of the table are the trace's host order (HostTable appends in order).
        self.inst_row = trace.host_positions(inst.host)
        self.inst_live = np.ones(len(inst), dtype=np.bool_)
        self._id_order = np.argsort(inst.id, kind="stable")
        self._by_host = np.argsort(self.inst_row, kind="stable")
        self._host_start = np.searchsorted(self.inst_row[self._by_host], np.arange(len(trace.hosts) + 1))
        self.count = np.bincount(self.inst_row, minlength=len(trace.hosts)).astype(np.int64)
        self.hosts_used = int(np.count_nonzero(self.count))
        demand = inst.demand()
        self.demand = demand.sum(axis=1) if len(inst) else np.zeros(3)
        self.capacity_total = self.table.capacity.sum(axis=1)
        # Per resource, capacities largest first, summed: the lower bound is a binary search.
        self._cumulative = [np.cumsum(np.sort(self.table.capacity[r])[::-1]) for r in range(3)]
        self.usage: dict[int, list[float]] = {}
        if len(inst):
            tenants, which = np.unique(inst.tenant, return_inverse=True)
            held = np.vstack([np.bincount(which, weights=demand[r]) for r in range(3)]).T.tolist()
            self.usage = dict(zip(tenants.tolist(), held, strict=True))
        names = trace.group_names()
        self.members: dict[str, Counter[int]] = {}
        for j in np.flatnonzero(inst.group >= 0).tolist():
            host_id = int(inst.host[j])
            self.members.setdefault(names[inst.group[j]], Counter())[host_id] += 1
        self.live: dict[int, tuple[int, Arrival]] = {}  # arrival id -> (host id, arrival)
        self.waiting: dict[int, tuple[Waiting, Arrival]] = {}
        self.started: list[Arrival] = []  # placed since the run loop last looked (to schedule their end)
        self.drivers: dict[int, SimulatorDriver] = {}  # table row -> its simulator, made on first use
        self.times: list[float] = []
        self.tally: Counter[str] = Counter()
        self.refused_by: Counter[str] = Counter()
        self.queued_by: Counter[str] = Counter()
        self.waits: dict[int, list[float]] = {p: [] for p in range(len(PRIORITY_NAMES))}
        # Room freed, a waiting request left or a new one joined since the last pass (see ``admit``).
        self.changed = False
        # Waiting requests refused since room last grew: until the next release room only shrinks,
        # so a pass would refuse them again; it skips their decision (see ``_try_waiting``).
        self.refused_since_release: set[int] = set()
        self.peak_share = -1.0
        self.peak = self.quality()

    # -- the engine --------------------------------------------------------------------------------
    def request(self, a: Arrival) -> Request:
        members = self.members.get(a.group) if a.group else None
        return Request(
            vcpus=a.vcpus, ram_mib=a.ram_mib, disk_gib=a.disk_gib, tenant_id=a.tenant,
            needs_kvm=a.kvm, needs_iommu=a.iommu,
            group_policy=self.trace.groups.get(a.group, "") if a.group else "",
            group_hosts=frozenset(members) if members else frozenset(),
        )  # fmt: skip

    def decide(self, a: Arrival, held: npt.NDArray[np.bool_] | None = None) -> tuple[int | None, str]:
        """One timed decision, and its claim in the table: the host id, or the filter that refused."""
        request = self.request(a)
        started = time.perf_counter()
        decision = self.engine.select(self.table, request, held=held)
        if decision.host_id is not None:
            self.table.claim(decision.host_id, request)
        self.times.append(time.perf_counter() - started)
        if decision.host_id is not None:
            return decision.host_id, ""
        last = next((s.name for s in reversed(decision.steps) if s.hosts_out == 0), "no hosts")
        return None, last

    # -- bookkeeping -------------------------------------------------------------------------------
    def book(self, a: Arrival, host_id: int, count_usage: bool) -> None:
        row = self.table.index[host_id]
        self._add(row, np.array([a.vcpus, a.ram_mib, a.disk_gib], dtype=np.float64), a.tenant, count_usage)
        if a.group:
            self.members.setdefault(a.group, Counter())[host_id] += 1
        self.live[a.id] = (host_id, a)
        self.started.append(a)
        if self.simulated[row]:
            driver = self.driver(row)
            spec = _spec(a.id, a.vcpus, a.ram_mib)
            driver.define(spec)
            driver.start(spec.name)
            self.tally["provisioned"] += 1
        else:
            self.tally["planned_on_real_hosts"] += 1
        share = float((self.demand / np.maximum(self.capacity_total, 1.0)).max())
        if share > self.peak_share:
            self.peak_share, self.peak = share, self.quality()

    def _add(self, row: int, demand: Floats, tenant: int, count_usage: bool) -> None:
        self.count[row] += 1
        self.hosts_used += int(self.count[row] == 1)
        self.demand += demand
        if count_usage:  # an admission pass counts its admitted requests' usage itself
            held = self.usage.setdefault(tenant, [0.0, 0.0, 0.0])
            for r in range(3):
                held[r] += demand[r]

    def _remove(self, row: int, demand: Floats, tenant: int, group: str, name: str) -> None:
        host_id = int(self.table.ids[row])
        v, r, d = (int(x) for x in demand)
        self.table.release(host_id, Request(v, r, d))
        self.count[row] -= 1
        self.hosts_used -= int(self.count[row] == 0)
        self.demand -= demand
        held = self.usage[tenant]
        for k in range(3):
            held[k] -= demand[k]
        if group:
            members = self.members[group]
            members[host_id] -= 1
            if members[host_id] <= 0:
                del members[host_id]
        if row in self.drivers:
            self.drivers[row].shutdown(name, 0.0)
            self.drivers[row].undefine(name)
        self.changed = True
        self.refused_since_release.clear()

    def driver(self, row: int) -> SimulatorDriver:
        """The host's simulator; made on first use with the host's first instances already running."""
        driver = self.drivers.get(row)
        if driver is None:
            h = self.trace.hosts[row]
            driver = self.drivers[row] = SimulatorDriver(
                SimHost(h.name, True, h.vcpus, h.ram_mib, h.disk_gib, h.kvm, h.iommu)
            )
            inst = self.trace.instances
            for j in self._by_host[self._host_start[row] : self._host_start[row + 1]].tolist():
                if self.inst_live[j]:
                    spec = _spec(int(inst.id[j]), int(inst.vcpus[j]), int(inst.ram_mib[j]))
                    driver.define(spec)
                    driver.start(spec.name)
        return driver

    def quality(self) -> Quality:
        # The k largest hosts must hold the demand: k is where their running sum first reaches it.
        bound = {
            name: int(np.searchsorted(self._cumulative[r], need - 1e-9) + 1) if need > 0 else 0
            for r, (name, need) in enumerate(zip(RESOURCES, self.demand.tolist(), strict=True))
        }
        return Quality(self.hosts_used, bound, {n: float(self.demand[r]) for r, n in enumerate(RESOURCES)})

    # -- events ------------------------------------------------------------------------------------
    def arrive(self, a: Arrival) -> None:
        """A new request, taken as the real system takes it (instance_create, scheduler.admission).

        The queue goes first (``admission_precheck``): while requests wait, one that may wait joins
        them, and a pass runs at once (``admission_kick`` asks for one) that admits it if its turn
        has come; one that may not wait may not take a host an overdue request could use, that
        room being held for the overdue one. A request no host could ever take
        (``Engine.never_fits``) is refused at once, even when it may wait.
        """
        if a.wait and self.waiting:
            if self.engine.never_fits(self.table, self.request(a)):
                self._refuse(NEVER_FITS)
                return
            self._enqueue(a, BEHIND_THE_QUEUE)
            self.changed = True  # not tried yet: the pass may admit it
            self.admit()
            return
        host_id, refused_by = self.decide(a, None if a.wait else self.held())
        if host_id is not None:
            self.book(a, host_id, count_usage=True)
            self.tally["placed_at_once"] += 1
        elif self.engine.never_fits(self.table, self.request(a)):
            self._refuse(NEVER_FITS)
        elif a.wait:
            self._enqueue(a, refused_by)
            self.refused_since_release.add(a.id)  # just refused: a pass before a release would be too
        else:
            self._refuse(refused_by)

    def held(self) -> npt.NDArray[np.bool_] | None:
        """The hosts overdue requests could use (``admission_precheck``); None when none is overdue."""
        held = None
        # The queue keeps the order requests joined it in, the oldest first: stop at the first that
        # is not overdue.
        for w, a in self.waiting.values():
            if not self.policy.overdue(w, self.now):
                break
            eligible = self.engine.eligible(self.table, self.request(a))
            held = eligible if held is None else held | eligible
        return held

    def _enqueue(self, a: Arrival, reason: str) -> None:
        demand = (float(a.vcpus), float(a.ram_mib), float(a.disk_gib))
        self.waiting[a.id] = (Waiting(a.id, a.tenant, a.priority, self.now, demand), a)
        self.tally["queued"] += 1
        self.queued_by[reason] += 1

    def _refuse(self, reason: str) -> None:
        self.tally["refused"] += 1
        self.refused_by[reason] += 1

    def depart(self, iid: int) -> None:
        if iid in self.live:
            host_id, a = self.live.pop(iid)
            demand = np.array([a.vcpus, a.ram_mib, a.disk_gib], dtype=np.float64)
            self._remove(self.table.index[host_id], demand, a.tenant, a.group, _name(iid))
        elif iid in self.waiting:
            del self.waiting[iid]  # deleting a queued instance cancels its request
            self.tally["cancelled"] += 1
            self.changed = True  # it may have been the overdue request others were held behind
            return
        else:
            inst = self.trace.instances
            pos = int(np.searchsorted(inst.id[self._id_order], iid)) if len(inst) else 0
            j = int(self._id_order[pos]) if pos < len(inst) else -1
            if j < 0 or inst.id[j] != iid or not self.inst_live[j]:
                self.tally["ignored_departures"] += 1  # refused, gone already, or not yet arrived
                return
            self.inst_live[j] = False
            group = self.trace.group_names()[inst.group[j]] if inst.group[j] >= 0 else ""
            demand = np.array([inst.vcpus[j], inst.ram_mib[j], inst.disk_gib[j]], dtype=np.float64)
            self._remove(int(self.inst_row[j]), demand, int(inst.tenant[j]), group, _name(iid))
        self.tally["departed"] += 1

    def admit(self) -> None:
        """An admission pass of the real queue policy at the simulated ``now``."""
        if self.give_up is not None:
            # The queue is in the order requests joined it: those waiting too long lead it.
            while self.waiting:
                key, (w, _) = next(iter(self.waiting.items()))
                if self.now - w.enqueued_at <= self.give_up:
                    break
                del self.waiting[key]
                self.tally["gave_up"] += 1
                self.changed = True
        # Between releases room only shrinks, so a pass with no release, departure from the queue
        # or newcomer since the last one admits nothing (what it would try was refused then, or
        # waited behind an overdue request that still waits): skipping it is exact, and spares a
        # full engine run per waiting request.
        if not self.waiting or not self.changed:
            return
        self.changed = False
        admission_pass(
            [w for w, _ in self.waiting.values()], self.now, self.policy, self.usage,
            self.capacity_total.tolist(), self._try_waiting,
        )  # fmt: skip

    def _try_waiting(self, w: Waiting) -> bool:
        if w.key in self.refused_since_release:
            return False  # refused with at least this much room: the engine would say so again
        a = self.waiting[w.key][1]
        host_id, _ = self.decide(a)
        if host_id is None:
            self.refused_since_release.add(w.key)
            return False
        del self.waiting[w.key]
        self.book(a, host_id, count_usage=False)
        self.tally["admitted_from_queue"] += 1
        self.waits[a.priority].append(self.now - w.enqueued_at)
        return True


def _name(iid: int) -> str:
    return f"{DOMAIN_PREFIX}{iid}"


def _spec(iid: int, vcpus: int, ram_mib: int) -> GuestSpec:
    """A simulated guest's definition: no disk, console or network exist behind it."""
    return GuestSpec(
        name=_name(iid), uuid=str(uuid.UUID(int=iid)), vcpus=vcpus, ram_mib=ram_mib, current_ram_mib=ram_mib,
        cpu_mode="emulated", io_model="virtio", balloon=True, disk_path="", serial_log="", network="",
        vnc_password="",
    )  # fmt: skip
