"""The trace: hosts, the instances running on them and events in time, and its file format.

A ``Trace`` holds hosts, the instances already running on them and a stream of events (arrivals,
departures). ``Trace.save`` and ``Trace.load`` keep one as JSON lines; the strict reader is
``scheduler.simulate.loader``. The instances already running are columns of numpy arrays, not
objects: a cloud of 100,000 hosts with ten instances each is a million records in a few dozen
megabytes.

Trace file, one JSON object per line (wrapped here), the ``type`` first; fields with a default may
be left out::

    {"type": "trace", "version": 1, "source": "generated", "seed": 1}
    {"type": "group", "name": "g1", "policy": "anti-affinity"}
    {"type": "host", "id": 1, "name": "sim-000001", "vcpus": 16, "ram_mib": 65536, "disk_gib": 1000,
     "cpu_ratio": 4.0, "ram_ratio": 1.0, "disk_ratio": 1.0, "enabled": true, "alive": true,
     "kvm": true, "iommu": false, "dedicated_to": 0, "load": 0.3, "simulated": true}
    {"type": "instance", "id": 7, "host": 1, "vcpus": 2, "ram_mib": 2048, "disk_gib": 20,
     "tenant": 3, "priority": 1, "group": ""}
    {"type": "arrive", "t": 0.5, "id": 1000001, "vcpus": 2, "ram_mib": 2048, "disk_gib": 20,
     "tenant": 4, "priority": 0, "group": "g1", "wait": true, "lifetime": 300.0, "kvm": false,
     "iommu": false}
    {"type": "depart", "t": 12.0, "id": 7}

The header comes first; a group or host comes before the records that name it; a departure names
an instance or arrival above it. Times are seconds; ``lifetime`` (null: forever) counts from the
moment the arrival is placed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scheduler.engine import HostRow

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
TRACE_VERSION = 1
PRIORITY_NAMES = ("low", "normal", "high", "critical")  # tenants.models.PriorityClass 0..3
GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


class TraceError(ValueError):
    """A trace file is malformed; the message names the line and the field."""


@dataclass
class Instances:
    """Instances running when the trace starts, as columns (a million of them are a few arrays)."""

    id: Ints
    host: Ints  # host id
    vcpus: Ints
    ram_mib: Ints
    disk_gib: Ints
    tenant: Ints
    priority: npt.NDArray[np.int8]
    group: npt.NDArray[np.int32]  # index into Trace.group_names(); -1: in no group

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def of(cls, columns: dict[str, Any]) -> Instances:
        """From lists or arrays, one per column."""
        return cls(
            id=np.asarray(columns["id"], dtype=np.int64),
            host=np.asarray(columns["host"], dtype=np.int64),
            vcpus=np.asarray(columns["vcpus"], dtype=np.int64),
            ram_mib=np.asarray(columns["ram_mib"], dtype=np.int64),
            disk_gib=np.asarray(columns["disk_gib"], dtype=np.int64),
            tenant=np.asarray(columns["tenant"], dtype=np.int64),
            priority=np.asarray(columns["priority"], dtype=np.int8),
            group=np.asarray(columns["group"], dtype=np.int32),
        )

    def demand(self) -> Floats:
        """3 x instances: vCPUs, RAM MiB, disk GiB."""
        return np.vstack([self.vcpus, self.ram_mib, self.disk_gib]).astype(np.float64)

    def nbytes(self) -> int:
        return sum(getattr(self, c).nbytes for c in self.__dataclass_fields__)


@dataclass(frozen=True)
class Arrival:
    """A request for a new instance at time ``t``."""

    t: float
    id: int
    vcpus: int
    ram_mib: int
    disk_gib: int
    tenant: int = 0
    priority: int = 1
    group: str = ""
    wait: bool = False  # on no room: wait in the admission queue instead of failing
    lifetime: float | None = None  # seconds from placement to departure; None: stays
    kvm: bool = False
    iommu: bool = False


@dataclass(frozen=True)
class Departure:
    """Instance ``id`` (running, or still waiting: then it is cancelled) goes away at time ``t``."""

    t: float
    id: int


Event = Arrival | Departure


@dataclass
class Trace:
    """A cloud and what happens to it: hosts, the instances on them, and events in time order."""

    hosts: list[HostRow]  # used_* are 0 here: what a host holds comes from ``instances``
    instances: Instances
    events: list[Event]
    groups: dict[str, str] = field(default_factory=dict)  # server group name -> policy
    real_hosts: frozenset[int] = frozenset()  # recorded from real hosts: planned on, never provisioned
    source: str = "generated"
    seed: int | None = None

    def group_names(self) -> list[str]:
        return list(self.groups)

    def host_positions(self, host_ids: Ints) -> Ints:
        """Index into ``hosts`` of each id in ``host_ids`` (ValueError for an unknown one)."""
        ids = np.array([h.id for h in self.hosts], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        found = np.searchsorted(ids[order], host_ids)
        found = np.minimum(found, max(len(ids) - 1, 0))
        if len(host_ids) and (len(ids) == 0 or (ids[order][found] != host_ids).any()):
            raise ValueError("an instance names a host that is not in the trace")
        positions: Ints = order[found] if len(host_ids) else np.zeros(0, dtype=np.int64)
        return positions

    def usage(self) -> Floats:
        """3 x hosts: what the instances already running hold on each host."""
        positions = self.host_positions(self.instances.host)
        demand = self.instances.demand()
        sums = [np.bincount(positions, weights=demand[r], minlength=len(self.hosts)) for r in range(3)]
        return np.vstack(sums)

    def rows(self) -> list[HostRow]:
        """The hosts with what their instances hold, as the engine takes them."""
        used = self.usage().astype(np.int64).T.tolist()
        return [
            replace(h, used_vcpus=v, used_ram_mib=r, used_disk_gib=d)
            for h, (v, r, d) in zip(self.hosts, used, strict=True)
        ]

    def arrivals(self) -> list[Arrival]:
        return [e for e in self.events if isinstance(e, Arrival)]

    def simulated_hosts(self) -> list[HostRow]:
        """The hosts that are simulated (not recorded from real ones): those a run may provision on."""
        return [h for h in self.hosts if h.id not in self.real_hosts]

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the trace as JSON lines (the format in the module's docstring)."""
        with Path(path).open("w", encoding="utf-8") as out:
            for line in self.lines():
                out.write(line)
                out.write("\n")

    def lines(self) -> Iterator[str]:
        header: dict[str, Any] = {"type": "trace", "version": TRACE_VERSION, "source": self.source}
        if self.seed is not None:
            header["seed"] = self.seed
        yield json.dumps(header)
        for name, policy in self.groups.items():
            yield json.dumps({"type": "group", "name": name, "policy": policy})
        for h in self.hosts:
            yield json.dumps(
                {"type": "host"}
                | {name: getattr(h, name) for name in _HOST_FIELDS}
                | {"simulated": h.id not in self.real_hosts}
            )
        # Index -1 (in no group) picks the empty string at the end.
        names = [json.dumps(n) for n in self.group_names()] + ['""']
        i = self.instances
        # A million lines: formatted directly, json.dumps per line would triple the time.
        for iid, host, v, r, d, tenant, prio, group in zip(
            i.id.tolist(), i.host.tolist(), i.vcpus.tolist(), i.ram_mib.tolist(), i.disk_gib.tolist(),
            i.tenant.tolist(), i.priority.tolist(), i.group.tolist(), strict=True,
        ):  # fmt: skip
            yield (
                f'{{"type": "instance", "id": {iid}, "host": {host}, "vcpus": {v}, "ram_mib": {r}, '
                f'"disk_gib": {d}, "tenant": {tenant}, "priority": {prio}, '
                f'"group": {names[group]}}}'
            )
        for e in self.events:
            if isinstance(e, Departure):
                yield json.dumps({"type": "depart", "t": e.t, "id": e.id})
            else:
                yield json.dumps({"type": "arrive"} | {n: getattr(e, n) for n in _ARRIVAL_FIELDS})

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace file; a malformed one raises TraceError naming the line and the field."""
        from scheduler.simulate.loader import read  # the reader builds Traces: imported on use

        with Path(path).open(encoding="utf-8") as lines:
            return read(lines)


_HOST_FIELDS = (
    "id", "name", "vcpus", "ram_mib", "disk_gib", "cpu_ratio", "ram_ratio", "disk_ratio",
    "enabled", "alive", "kvm", "iommu", "dedicated_to", "load",
)  # fmt: skip
_ARRIVAL_FIELDS = (
    "t", "id", "vcpus", "ram_mib", "disk_gib", "tenant", "priority", "group", "wait", "lifetime",
    "kvm", "iommu",
)  # fmt: skip
