"""The placement engine: filters and weighers over a column table of hosts (ARCHITECTURE §4).

Nova runs each filter object over each host object in a Python loop. Here every filter is one
vectorised mask over numpy columns and every weigher one score column, so a decision over 10,000
hosts is a few dozen array operations. The same code serves one request, a DRS pass and the
simulator. Every decision explains itself: how many hosts each filter took in and let through,
examples of the hosts it removed and why, and the top candidates with the parts of their weight.

This module knows nothing of Django: it is fed rows (``HostRow``) and requests (``Request``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

Mask = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
EXAMPLES = 10  # removed hosts named per filter in a decision record (the counts are always whole)
RESOURCES = ("vcpus", "ram_mib", "disk_gib")


@dataclass(frozen=True)
class HostRow:
    """One host as the engine sees it: raw capacity, overcommit ratios, what is reserved on it."""

    id: int
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    cpu_ratio: float = 4.0
    ram_ratio: float = 1.0
    disk_ratio: float = 1.0
    # Reserved, or measured (demand mode: fractions of a vCPU count).
    used_vcpus: float = 0
    used_ram_mib: float = 0
    used_disk_gib: float = 0
    enabled: bool = True
    alive: bool = True  # heartbeat fresh
    kvm: bool = False
    iommu: bool = False
    dedicated_to: int = 0  # a tenant id: the host belongs to an aggregate only that tenant may use
    load: float = 0.0  # measured CPU load, 0..1


@dataclass(frozen=True)
class Request:
    """What one instance needs, and the constraints of its tenant and server group."""

    vcpus: int
    ram_mib: int
    disk_gib: int
    tenant_id: int = 0
    needs_kvm: bool = False
    needs_iommu: bool = False
    # Server group: its policy and the hosts its members already run on.
    group_policy: str = ""  # "", "affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"
    group_hosts: frozenset[int] = frozenset()

    def demand(self) -> Floats:
        return np.array([self.vcpus, self.ram_mib, self.disk_gib], dtype=np.float64)


class HostTable:
    """Hosts as columns. Rows are updated in place (``upsert``, ``claim``), never rebuilt per decision."""

    def __init__(self, rows: Iterable[HostRow] = ()) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.names: list[str] = []
        # Resource-major (3 x hosts: vCPUs, RAM MiB, disk GiB), so each resource is one contiguous
        # column for the vectorised filters and weighers.
        self.capacity = np.zeros((3, 0), dtype=np.float64)  # after overcommit
        self.raw = np.zeros((3, 0), dtype=np.float64)  # before overcommit
        self.used = np.zeros((3, 0), dtype=np.float64)
        self.enabled = np.zeros(0, dtype=np.bool_)
        self.alive = np.zeros(0, dtype=np.bool_)
        self.kvm = np.zeros(0, dtype=np.bool_)
        self.iommu = np.zeros(0, dtype=np.bool_)
        self.dedicated_to = np.zeros(0, dtype=np.int64)
        self.load = np.zeros(0, dtype=np.float64)
        self.index: dict[int, int] = {}
        self._free: Floats | None = None  # capacity - used, until the next change
        self._grow(rows)

    def __len__(self) -> int:
        return len(self.names)

    def _grow(self, rows: Iterable[HostRow]) -> None:
        new = list(rows)
        if not new:
            return
        start = len(self.names)
        self.ids = np.concatenate([self.ids, np.array([r.id for r in new], dtype=np.int64)])
        self.names.extend(r.name for r in new)
        self.capacity = np.hstack([self.capacity, np.array([_capacity(r) for r in new], float).T])
        self.raw = np.hstack([self.raw, np.array([[r.vcpus, r.ram_mib, r.disk_gib] for r in new], float).T])
        self.used = np.hstack(
            [self.used, np.array([[r.used_vcpus, r.used_ram_mib, r.used_disk_gib] for r in new], float).T]
        )
        for column, attr in (("enabled", "enabled"), ("alive", "alive"), ("kvm", "kvm"), ("iommu", "iommu")):
            values = np.array([getattr(r, attr) for r in new], dtype=np.bool_)
            setattr(self, column, np.concatenate([getattr(self, column), values]))
        self.dedicated_to = np.concatenate(
            [self.dedicated_to, np.array([r.dedicated_to for r in new], dtype=np.int64)]
        )
        self.load = np.concatenate([self.load, np.array([r.load for r in new], dtype=np.float64)])
        for offset, row in enumerate(new):
            if row.id in self.index:
                raise ValueError(f"host id {row.id} is in the table twice")
            self.index[row.id] = start + offset
        self._free = None

    def upsert(self, row: HostRow) -> None:
        """Add a host, or refresh one in place (the incremental refresh from the database)."""
        i = self.index.get(row.id)
        if i is None:
            self._grow([row])
            return
        self.names[i] = row.name
        self.capacity[:, i] = _capacity(row)
        self.raw[:, i] = (row.vcpus, row.ram_mib, row.disk_gib)
        self.used[:, i] = (row.used_vcpus, row.used_ram_mib, row.used_disk_gib)
        self.enabled[i], self.alive[i] = row.enabled, row.alive
        self.kvm[i], self.iommu[i] = row.kvm, row.iommu
        self.dedicated_to[i], self.load[i] = row.dedicated_to, row.load
        self._free = None

    def set_live(self, used: Floats, enabled: Mask, alive: Mask, load: Floats) -> None:
        """Replace the columns that change all the time, for every host at once (in table order)."""
        if used.shape != self.used.shape or len(enabled) != len(self) or len(load) != len(self):
            raise ValueError("live columns must cover every host of the table, in its order")
        self.used = used.astype(np.float64, copy=True)
        self.enabled, self.alive = enabled.astype(np.bool_), alive.astype(np.bool_)
        self.load = load.astype(np.float64)
        self._free = None

    def claim(self, host_id: int, request: Request) -> None:
        """Count the request against the host (what the database claim did, mirrored here)."""
        i = self.index[host_id]
        self.used[:, i] += request.demand()
        if self._free is not None:
            self._free[:, i] = self.capacity[:, i] - self.used[:, i]

    def release(self, host_id: int, request: Request) -> None:
        i = self.index[host_id]
        self.used[:, i] -= request.demand()
        if self._free is not None:
            self._free[:, i] = self.capacity[:, i] - self.used[:, i]

    def free(self) -> Floats:
        """What each host has left; kept up to date by claim and release rather than recomputed."""
        if self._free is None:
            self._free = self.capacity - self.used
        return self._free


def _capacity(row: HostRow) -> list[float]:
    # Whole units, as Nova's ram_allocation_ratio arithmetic: 2 CPUs at 4.0 give 8 vCPUs.
    return [
        math.floor(row.vcpus * row.cpu_ratio),
        math.floor(row.ram_mib * row.ram_ratio),
        math.floor(row.disk_gib * row.disk_ratio),
    ]


# -- filters ---------------------------------------------------------------------------------------
class Filter:
    """Keeps the hosts that can take the request; ``why`` says, for a removed host, what it lacked.

    ``mask`` returns None when the request gives it nothing to check (every host passes).
    """

    name: ClassVar[str] = ""

    def mask(self, table: HostTable, request: Request) -> Mask | None:
        raise NotImplementedError

    def why(self, table: HostTable, request: Request, i: int) -> str:
        raise NotImplementedError


class StateFilter(Filter):
    name = "state"

    def mask(self, table: HostTable, request: Request) -> Mask:
        return table.enabled & table.alive

    def why(self, table: HostTable, request: Request, i: int) -> str:
        return "agent heartbeat is stale" if table.enabled[i] else "not enabled (disabled or in maintenance)"


class CapabilityFilter(Filter):
    name = "capability"

    def mask(self, table: HostTable, request: Request) -> Mask | None:
        if request.needs_kvm and request.needs_iommu:
            both: Mask = table.kvm & table.iommu
            return both
        if request.needs_kvm:
            return table.kvm
        if request.needs_iommu:
            return table.iommu
        return None

    def why(self, table: HostTable, request: Request, i: int) -> str:
        if request.needs_kvm and not table.kvm[i]:
            return "no working KVM"
        return "no IOMMU for PCI passthrough"


class AggregateFilter(Filter):
    """A host dedicated to a tenant takes only that tenant's instances; shared hosts take anyone's."""

    name = "aggregate"

    def mask(self, table: HostTable, request: Request) -> Mask | None:
        dedicated: Mask = (table.dedicated_to == 0) | (table.dedicated_to == request.tenant_id)
        return dedicated

    def why(self, table: HostTable, request: Request, i: int) -> str:
        return "dedicated to another tenant"


class ServerGroupFilter(Filter):
    """Hard affinity: only the hosts the group already uses (any, for its first member).
    Hard anti-affinity: none of them."""

    name = "server_group"

    def _used(self, table: HostTable, request: Request) -> Mask:
        used = np.zeros(len(table), dtype=np.bool_)
        rows = [table.index[h] for h in request.group_hosts if h in table.index]
        used[rows] = True
        return used

    def mask(self, table: HostTable, request: Request) -> Mask | None:
        if request.group_policy == "anti-affinity" and request.group_hosts:
            return ~self._used(table, request)
        if request.group_policy == "affinity" and request.group_hosts:
            return self._used(table, request)
        return None

    def why(self, table: HostTable, request: Request, i: int) -> str:
        if request.group_policy == "anti-affinity":
            return "already runs a member of the anti-affinity group"
        return "does not run the affinity group's members"


class CapacityFilter(Filter):
    name = "capacity"

    def mask(self, table: HostTable, request: Request) -> Mask:
        free = table.free()
        fits: Mask = (free[0] >= request.vcpus) & (free[1] >= request.ram_mib) & (free[2] >= request.disk_gib)
        return fits

    def why(self, table: HostTable, request: Request, i: int) -> str:
        free = table.free()[:, i]
        short = [
            f"{need - have:g} {unit} short"
            for need, have, unit in zip(request.demand(), free, ("vCPUs", "MiB RAM", "GiB disk"), strict=True)
            if need > have
        ]
        return "; ".join(short)

    def shortfall(self, table: HostTable, request: Request, rows: npt.NDArray[np.intp]) -> Floats:
        """How far each of ``rows`` is from fitting, as the worst resource's missing share of the need."""
        demand = request.demand()[:, None]
        missing = np.maximum(demand - table.free()[:, rows], 0.0) / np.maximum(demand, 1.0)
        worst: Floats = missing.max(axis=0)
        return worst


class HeldFilter(Filter):
    """Hosts whose room is held for requests that waited too long (scheduler.queueing's overdue rule).

    Not configurable: the admission passes it to ``Engine.select`` for new requests while an
    overdue request waits, with the hosts that request could use.
    """

    name = "held"

    def __init__(self, held: Mask) -> None:
        self.held = held

    def mask(self, table: HostTable, request: Request) -> Mask:
        return ~self.held

    def why(self, table: HostTable, request: Request, i: int) -> str:
        return "its room is held for a request that has waited too long"


FILTERS: dict[str, type[Filter]] = {
    f.name: f for f in (StateFilter, CapabilityFilter, AggregateFilter, ServerGroupFilter, CapacityFilter)
}
DEFAULT_FILTERS = ("state", "capability", "aggregate", "server_group", "capacity")


# -- weighers --------------------------------------------------------------------------------------
@dataclass
class Rows:
    """The candidates' slice of the table, taken once per decision for all the weighers."""

    index: npt.NDArray[np.intp]
    ids: npt.NDArray[np.int64]
    free: Floats  # 3 x candidates, after overcommit, before this request
    capacity: Floats  # 3 x candidates
    load: Floats

    @classmethod
    def of(cls, table: HostTable, index: npt.NDArray[np.intp] | None) -> Rows:
        """The candidates ``index`` (None: every host, without copying)."""
        if index is None:
            return cls(np.arange(len(table)), table.ids, table.free(), table.capacity, table.load)
        return cls(
            index,
            table.ids[index],
            table.free().take(index, axis=1),
            table.capacity.take(index, axis=1),
            table.load[index],
        )


class Weigher:
    """Scores candidates; scores are normalised to 0..1 over the candidates, then multiplied.

    A positive multiplier on a resource spreads (more free is better); a negative one packs.
    """

    name: ClassVar[str] = ""

    def __init__(self, multiplier: float = 1.0) -> None:
        self.multiplier = multiplier

    def raw(self, rows: Rows, request: Request) -> Floats | None:
        """Scores of the candidates; None when all would be equal (they add nothing)."""
        raise NotImplementedError


class _FreeWeigher(Weigher):
    column: ClassVar[int] = 0

    def raw(self, rows: Rows, request: Request) -> Floats | None:
        # Free share after placing the request: comparable across hosts of different sizes.
        capacity = np.maximum(rows.capacity[self.column], 1.0)
        need = (request.vcpus, request.ram_mib, request.disk_gib)[self.column]
        after: Floats = (rows.free[self.column] - need) / capacity
        return after


class CpuWeigher(_FreeWeigher):
    name = "cpu"
    column = 0


class RamWeigher(_FreeWeigher):
    name = "ram"
    column = 1


class DiskWeigher(_FreeWeigher):
    name = "disk"
    column = 2


class LoadWeigher(Weigher):
    """Prefers hosts whose measured CPU load is low."""

    name = "load"

    def raw(self, rows: Rows, request: Request) -> Floats | None:
        idle: Floats = 1.0 - rows.load
        return idle


class SoftAffinityWeigher(Weigher):
    """Soft affinity prefers the group's hosts; soft anti-affinity avoids them."""

    name = "soft_affinity"

    def raw(self, rows: Rows, request: Request) -> Floats | None:
        if request.group_policy not in ("soft-affinity", "soft-anti-affinity") or not request.group_hosts:
            return None
        members = np.isin(rows.ids, np.fromiter(request.group_hosts, dtype=np.int64))
        score = members.astype(np.float64)
        return score if request.group_policy == "soft-affinity" else 1.0 - score


WEIGHERS: dict[str, type[Weigher]] = {
    w.name: w for w in (CpuWeigher, RamWeigher, DiskWeigher, LoadWeigher, SoftAffinityWeigher)
}
SPREAD = {"ram": 1.0, "cpu": 1.0, "disk": 0.5, "load": 0.5, "soft_affinity": 2.0}
PACK = {"ram": -1.0, "cpu": -1.0, "disk": -0.5, "load": 0.0, "soft_affinity": 2.0}


def _normalise(values: Floats) -> Floats:
    """Scale to 0..1 over the candidates (all equal: all 0), as nova.weights.normalize does."""
    if len(values) == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values)
    scaled: Floats = (values - low) / (high - low)
    return scaled


# -- decisions -------------------------------------------------------------------------------------
@dataclass
class FilterStep:
    name: str
    hosts_in: int
    hosts_out: int
    removed: list[tuple[str, str]] = field(default_factory=list)  # (host, reason), at most EXAMPLES


@dataclass
class Candidate:
    host: str
    host_id: int
    weight: float
    parts: dict[str, float]


@dataclass
class Decision:
    """Why a host was chosen, or why none could be."""

    steps: list[FilterStep]
    top: list[Candidate]
    host_id: int | None = None
    host: str = ""
    error: str = ""
    nearest_miss: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "error": self.error,
            "nearest_miss": self.nearest_miss,
            "filters": [
                {
                    "name": s.name,
                    "in": s.hosts_in,
                    "out": s.hosts_out,
                    "removed": [list(r) for r in s.removed],
                }
                for s in self.steps
            ],
            "top": [{"host": c.host, "weight": round(c.weight, 6), "parts": c.parts} for c in self.top],
        }


class Engine:
    """A configured pipeline: filters in order, then weighers with their multipliers."""

    def __init__(
        self, filters: Sequence[str] = DEFAULT_FILTERS, weighers: dict[str, float] | None = None
    ) -> None:
        unknown = [f for f in filters if f not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; known: {sorted(FILTERS)}")
        multipliers = SPREAD if weighers is None else weighers
        unknown = [w for w in multipliers if w not in WEIGHERS]
        if unknown:
            raise ValueError(f"unknown weigher(s) {unknown}; known: {sorted(WEIGHERS)}")
        self.filters = [FILTERS[f]() for f in filters]
        self.weighers = [WEIGHERS[w](m) for w, m in multipliers.items() if m != 0]

    def select(
        self, table: HostTable, request: Request, top_n: int = 3, held: Mask | None = None
    ) -> Decision:
        """Filter and weigh; the Decision names the chosen host or says why there is none.

        ``held``: hosts this request may not take (their room is kept for an overdue request);
        they are removed first, as a filter step of their own in the record.
        """
        alive: Mask | None = None  # None: every host still in
        count = len(table)
        steps: list[FilterStep] = []
        filters = self.filters if held is None or not held.any() else [HeldFilter(held), *self.filters]
        for f in filters:
            keep = f.mask(table, request)
            if keep is None:
                steps.append(FilterStep(f.name, count, count))
                continue
            after = keep if alive is None else alive & keep
            remaining = int(np.count_nonzero(after))
            step = FilterStep(f.name, count, remaining)
            if remaining < count:
                removed = ~keep if alive is None else alive & ~keep
                for i in removed.nonzero()[0][:EXAMPLES]:
                    step.removed.append((table.names[i], f.why(table, request, int(i))))
            steps.append(step)
            if remaining == 0:
                return self._refusal(table, request, steps, step, alive)
            alive, count = after, remaining
        rows = Rows.of(table, None if alive is None else alive.nonzero()[0])
        if len(rows.index) == 0:
            return self._refusal(table, request, steps, None, alive)
        total = np.zeros(len(rows.index))
        parts: dict[str, Floats] = {}
        for w in self.weighers:
            raw = w.raw(rows, request)
            if raw is None:
                continue
            part = w.multiplier * _normalise(raw)
            parts[w.name] = part
            total += part
        # The best few without sorting them all; ties go to the lower host id (reproducible).
        k = min(top_n, len(total))
        best = np.argpartition(-total, k - 1)[:k] if k < len(total) else np.arange(len(total))
        best = best[np.lexsort((rows.ids[best], -total[best]))]
        # The parts of the few best, rounded in one array operation rather than one by one.
        names = list(parts)
        shown = np.vstack([parts[n][best] for n in names]).round(6).T.tolist() if names else [[]] * len(best)
        top = [
            Candidate(
                host=table.names[rows.index[j]],
                host_id=int(rows.ids[j]),
                weight=float(total[j]),
                parts=dict(zip(names, values, strict=True)),
            )
            for j, values in zip(best.tolist(), shown, strict=True)
        ]
        return Decision(steps=steps, top=top, host_id=top[0].host_id, host=top[0].host)

    def _refusal(
        self,
        table: HostTable,
        request: Request,
        steps: list[FilterStep],
        last: FilterStep | None,
        alive: Mask | None,
    ) -> Decision:
        decision = Decision(steps=steps, top=[])
        if last is None or last.hosts_in == 0:
            decision.error = "no valid host: no compute host is registered"
            return decision
        decision.error = f"no valid host: filter '{last.name}' removed the last {last.hosts_in} candidate(s)"
        if last.removed:
            decision.error += f" ({last.removed[0][1]} on {last.removed[0][0]})"
        decision.nearest_miss = self._nearest_miss(
            table, request, np.ones(len(table), dtype=np.bool_) if alive is None else alive
        )
        return decision

    def eligible(self, table: HostTable, request: Request) -> Mask:
        """Hosts that pass every filter but capacity: where the request could go once room frees."""
        keep = np.ones(len(table), dtype=np.bool_)
        for f in self.filters:
            if not isinstance(f, CapacityFilter) and (mask := f.mask(table, request)) is not None:
                keep &= mask
        return keep

    def never_fits(self, table: HostTable, request: Request) -> str:
        """Why no host could ever take the request, even empty and enabled ("": some host could).

        Only what waiting cannot change counts: capability, dedicated aggregates and each host's
        whole capacity. A request refused for this must fail at once, not wait in the queue.
        """
        if len(table) == 0:
            return "no compute host is registered"
        keep = np.ones(len(table), dtype=np.bool_)
        for f in self.filters:
            if (
                isinstance(f, (CapabilityFilter, AggregateFilter))
                and (mask := f.mask(table, request)) is not None
            ):
                keep &= mask
        if not keep.any():
            return "no host has the capability or aggregate it needs"
        demand = request.demand()
        if ((table.capacity[:, keep] >= demand[:, None]).all(axis=0)).any():
            return ""
        largest = table.capacity[:, keep].max(axis=1)
        over = [
            f"{need:g} {unit} (the largest host has {have:g})"
            for need, have, unit in zip(demand, largest, ("vCPUs", "MiB RAM", "GiB disk"), strict=True)
            if need > have
        ]
        if not over:
            return "no single host has all of it at once (each lacks one resource)"
        return "larger than any host: it needs " + ", ".join(over)

    def ranked(self, table: HostTable, request: Request) -> list[int]:
        """Every passing host id, best first (the claim tries them in turn when it loses a race)."""
        decision = self.select(table, request, top_n=len(table))
        return [c.host_id for c in decision.top]

    def _nearest_miss(self, table: HostTable, request: Request, alive: Mask) -> str:
        """Among hosts that passed every other check, the one closest to having room."""
        others: Mask = alive.copy()
        for f in self.filters:
            keep = None if isinstance(f, CapacityFilter) else f.mask(table, request)
            if keep is not None:
                others &= keep
        rows = np.flatnonzero(others)
        if len(rows) == 0:
            return ""
        capacity = next((f for f in self.filters if isinstance(f, CapacityFilter)), CapacityFilter())
        gaps = capacity.shortfall(table, request, rows)
        best = int(rows[int(np.argmin(gaps))])
        reason = capacity.why(table, request, best)
        return f"{table.names[best]}: {reason}" if reason else table.names[best]
