"""The simulator: a cloud of simulated hosts replayed through the real engine and the real queue policy.

For scale benchmarks and what-if planning only (issue 6, the house rule of ARCHITECTURE §2). A
``Trace`` holds hosts, the instances already running on them and a stream of events (arrivals,
departures). ``generate`` makes one, ``record`` takes one from the database, ``Trace.save`` and
``Trace.load`` keep one as JSON lines. ``Simulator.run`` replays it over a ``HostTable`` with
``scheduler.engine``: an arrival that finds no room and asked to wait goes into the admission queue,
which ``scheduler.queueing.admission_pass`` serves on each departure and on a periodic tick, on a
simulated clock. Placements on simulated hosts are "provisioned" through ``SimulatorDriver``
(memory only); a what-if over recorded real hosts only books them in the table: nothing here ever
acts on a real host.

The instances already running are columns of numpy arrays, not objects: a cloud of 100,000 hosts
with ten instances each is a million records in a few dozen megabytes. Apart from ``record``
(which reads the database), nothing here needs Django.

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

import heapq
import itertools
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compute.drivers.base import GuestSpec
from compute.drivers.sim import SimHost, SimulatorDriver
from scheduler.engine import RESOURCES, Engine, HostRow, HostTable, Request
from scheduler.queueing import QueuePolicy, Waiting, admission_pass

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
TRACE_VERSION = 1
PRIORITY_NAMES = ("low", "normal", "high", "critical")  # tenants.models.PriorityClass 0..3
GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
DOMAIN_PREFIX = "sim-"  # simulated guests' names: never a real cloud's prefix
# Host shapes (vCPUs, RAM MiB, disk GiB) and flavors of generated clouds; small flavors are common.
SHAPES = ((16, 65536, 1000), (32, 131072, 2000), (64, 262144, 4000))
FLAVORS = ((1, 1024, 10), (2, 2048, 20), (2, 4096, 40), (4, 8192, 80), (8, 16384, 160))
FLAVOR_WEIGHTS = (0.35, 0.25, 0.2, 0.15, 0.05)
PRIORITY_WEIGHTS = (0.2, 0.5, 0.2, 0.1)


class TraceError(ValueError):
    """A trace file is malformed; the message names the line and the field."""


# -- the trace -------------------------------------------------------------------------------------
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
        with Path(path).open(encoding="utf-8") as lines:
            return _Reader().read(lines)


_HOST_FIELDS = (
    "id", "name", "vcpus", "ram_mib", "disk_gib", "cpu_ratio", "ram_ratio", "disk_ratio",
    "enabled", "alive", "kvm", "iommu", "dedicated_to", "load",
)  # fmt: skip
_ARRIVAL_FIELDS = (
    "t", "id", "vcpus", "ram_mib", "disk_gib", "tenant", "priority", "group", "wait", "lifetime",
    "kvm", "iommu",
)  # fmt: skip

REQUIRED = object()
# Per record type: field -> (kind, default). The kinds are checked by _Reader.value.
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "trace": {"version": ("version", REQUIRED), "source": ("text", "file"), "seed": ("any", None)},
    "group": {"name": ("name", REQUIRED), "policy": ("policy", REQUIRED)},
    "host": {
        "id": ("id", REQUIRED), "name": ("name", REQUIRED), "vcpus": ("count", REQUIRED),
        "ram_mib": ("count", REQUIRED), "disk_gib": ("count", REQUIRED), "cpu_ratio": ("ratio", 4.0),
        "ram_ratio": ("ratio", 1.0), "disk_ratio": ("ratio", 1.0), "enabled": ("bool", True),
        "alive": ("bool", True), "kvm": ("bool", False), "iommu": ("bool", False),
        "dedicated_to": ("whole", 0), "load": ("share", 0.0), "simulated": ("bool", True),
    },
    "instance": {
        "id": ("id", REQUIRED), "host": ("id", REQUIRED), "vcpus": ("count", REQUIRED),
        "ram_mib": ("count", REQUIRED), "disk_gib": ("whole", REQUIRED), "tenant": ("whole", 0),
        "priority": ("priority", 1), "group": ("text", ""),
    },
    "arrive": {
        "t": ("time", REQUIRED), "id": ("id", REQUIRED), "vcpus": ("count", REQUIRED),
        "ram_mib": ("count", REQUIRED), "disk_gib": ("whole", REQUIRED), "tenant": ("whole", 0),
        "priority": ("priority", 1), "group": ("text", ""), "wait": ("bool", False),
        "lifetime": ("lifetime", None), "kvm": ("bool", False), "iommu": ("bool", False),
    },
    "depart": {"t": ("time", REQUIRED), "id": ("id", REQUIRED)},
}  # fmt: skip
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "id": ("a whole number >= 1", lambda v: _is_int(v) and v >= 1),
    "count": ("a whole number >= 1", lambda v: _is_int(v) and v >= 1),
    "whole": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "version": (f"{TRACE_VERSION}", lambda v: _is_int(v) and v == TRACE_VERSION),
    "priority": ("a priority class 0..3", lambda v: _is_int(v) and 0 <= v <= 3),
    "ratio": ("a number > 0", lambda v: _is_num(v) and v > 0),
    "share": ("a number from 0 to 1", lambda v: _is_num(v) and 0 <= v <= 1),
    "time": ("seconds, a number >= 0", lambda v: _is_num(v) and v >= 0),
    "lifetime": ("null or seconds > 0", lambda v: v is None or (_is_num(v) and v > 0)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "name": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
    "text": ("a string", lambda v: isinstance(v, str)),
    "policy": (" or ".join(GROUP_POLICIES), lambda v: v in GROUP_POLICIES),
    "any": ("anything", lambda v: True),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class _Reader:
    """Reads a trace line by line, checking each field and each reference as it goes."""

    def __init__(self) -> None:
        self.groups: dict[str, str] = {}
        self.group_index: dict[str, int] = {}
        self.hosts: list[HostRow] = []
        self.host_ids: set[int] = set()
        self.real: set[int] = set()
        self.ids: set[int] = set()  # instances and arrivals share one id space, as Instance rows do
        self.columns: dict[str, list[int]] = {c: [] for c in ("id", "host", "vcpus", "ram_mib", "disk_gib")}
        self.columns |= {"tenant": [], "priority": [], "group": []}
        self.events: list[Event] = []
        self.header: dict[str, Any] = {}

    def error(self, line: int, message: str, name: str = "") -> TraceError:
        where = f"line {line}, field {name!r}" if name else f"line {line}"
        return TraceError(f"{where}: {message}")

    def value(self, line: int, kind: str, record: dict[str, Any], name: str, default: Any) -> Any:
        if name not in record:
            if default is REQUIRED:
                raise self.error(line, "missing", name)
            return default
        value = record[name]
        expected, ok = _KINDS[kind]
        if not ok(value):
            raise self.error(line, f"expected {expected}, got {value!r}", name)
        return value

    def read(self, lines: Any) -> Trace:
        number = 0
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise self.error(number, f"not JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise self.error(number, "expected a JSON object")
            self.record(number, record)
        if not self.header:
            raise TraceError(f"line {number + 1}: the trace is empty (no header line)")
        self.events.sort(key=lambda e: e.t)  # stable: simultaneous events keep the file's order
        seed = self.header.get("seed")
        return Trace(
            hosts=self.hosts,
            instances=Instances.of(self.columns),
            events=self.events,
            groups=self.groups,
            real_hosts=frozenset(self.real),
            source=str(self.header.get("source") or "file"),
            seed=seed if _is_int(seed) else None,
        )

    def record(self, line: int, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind not in SCHEMA:
            raise self.error(line, f"unknown record type {kind!r} (known: {', '.join(SCHEMA)})", "type")
        if not self.header and kind != "trace":
            raise self.error(line, 'the first line must be the header {"type": "trace", "version": 1}')
        schema = SCHEMA[kind]
        for name in record:
            if name != "type" and name not in schema:
                raise self.error(line, f"unknown field (known for {kind}: {', '.join(schema)})", name)
        values = {name: self.value(line, k, record, name, default) for name, (k, default) in schema.items()}
        getattr(self, f"on_{kind}")(line, values)

    def on_trace(self, line: int, values: dict[str, Any]) -> None:
        if self.header:
            raise self.error(line, "a second header line")
        self.header = values

    def on_group(self, line: int, values: dict[str, Any]) -> None:
        if values["name"] in self.groups:
            raise self.error(line, f"group {values['name']!r} is defined twice", "name")
        self.groups[values["name"]] = values["policy"]
        self.group_index[values["name"]] = len(self.group_index)

    def on_host(self, line: int, values: dict[str, Any]) -> None:
        if values["id"] in self.host_ids:
            raise self.error(line, f"host id {values['id']} is defined twice", "id")
        simulated = values.pop("simulated")
        for name in ("cpu_ratio", "ram_ratio", "disk_ratio", "load"):
            values[name] = float(values[name])
        row = HostRow(**values)
        self.hosts.append(row)
        self.host_ids.add(row.id)
        if not simulated:
            self.real.add(row.id)

    def _new_id(self, line: int, iid: int) -> None:
        if iid in self.ids:
            raise self.error(line, f"instance id {iid} is used twice", "id")
        self.ids.add(iid)

    def _group(self, line: int, name: str) -> None:
        if name and name not in self.groups:
            raise self.error(line, f"no group {name!r} above this line (groups come first)", "group")

    def on_instance(self, line: int, values: dict[str, Any]) -> None:
        self._new_id(line, values["id"])
        if values["host"] not in self.host_ids:
            raise self.error(line, f"no host with id {values['host']} above this line", "host")
        self._group(line, values["group"])
        group = values.pop("group")
        values["group"] = self.group_index[group] if group else -1
        for name, value in values.items():
            self.columns[name].append(value)

    def on_arrive(self, line: int, values: dict[str, Any]) -> None:
        self._new_id(line, values["id"])
        self._group(line, values["group"])
        values["t"] = float(values["t"])
        if values["lifetime"] is not None:
            values["lifetime"] = float(values["lifetime"])
        self.events.append(Arrival(**values))

    def on_depart(self, line: int, values: dict[str, Any]) -> None:
        if values["id"] not in self.ids:
            raise self.error(line, f"no instance or arrival with id {values['id']} above this line", "id")
        self.events.append(Departure(t=float(values["t"]), id=values["id"]))


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


def hosts_register(trace: Trace) -> int:
    """Register the trace's simulated hosts as ``Host`` rows marked simulated; returns how many were new.

    Explicit registration is the only way a simulated host enters the database, and real placement
    never reads such rows (its host table takes ``simulated=False`` only). A name
    already held by a real host is refused; one held by a simulated host is kept as it is.
    """
    from django.db import transaction

    from compute.models import Host, HostState

    wanted = [h for h in trace.hosts if h.id not in trace.real_hosts]
    with transaction.atomic():
        existing: dict[str, bool] = {}
        for start in range(0, len(wanted), 5000):
            names = [h.name for h in wanted[start : start + 5000]]
            existing.update(Host.objects.filter(name__in=names).values_list("name", "simulated"))
        clash = sorted(name for name, simulated in existing.items() if not simulated)
        if clash:
            raise ValueError(f"real hosts already have these names: {', '.join(clash[:5])}")
        new = [
            Host(
                name=h.name, uri=f"sim://{h.name}", simulated=True, cpus=h.vcpus, ram_mib=h.ram_mib,
                disk_gib=h.disk_gib, cpu_ratio=h.cpu_ratio, ram_ratio=h.ram_ratio, disk_ratio=h.disk_ratio,
                kvm_device=h.kvm, kvm_usable=h.kvm, iommu=h.iommu, vmm="simulator",
                kvm_probe_detail="simulator: declared by the trace, never probed",
                state=HostState.ENABLED if h.enabled else HostState.DISABLED,
            )
            for h in wanted
            if h.name not in existing
        ]  # fmt: skip
        Host.objects.bulk_create(new, batch_size=1000)
    return len(new)


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Quality:
    """Hosts with at least one instance, against the fewest hosts the demand could fit on."""

    hosts_used: int
    # Per resource, the fewest hosts whose capacities (largest first) add up to the demand: with
    # hosts all alike, ceil(sum of demand / capacity); no placement can use fewer hosts.
    lower_bound: dict[str, int]
    demand: dict[str, float]

    @property
    def bound(self) -> int:
        return max(self.lower_bound.values(), default=0)

    @property
    def ratio(self) -> float:
        return self.hosts_used / self.bound if self.bound else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hosts_used": self.hosts_used,
            "lower_bound": self.bound,
            "lower_bound_per_resource": self.lower_bound,
            "ratio": round(self.ratio, 4),
            "demand": self.demand,
        }


@dataclass
class Report:
    """What a run did: decisions and their time, placements, refusals, the queue, packing quality."""

    hosts: int
    simulated_hosts: int
    instances_at_start: int
    events: int
    decisions: int
    placed_at_once: int
    admitted_from_queue: int
    refused: int
    refused_by_filter: dict[str, int]
    queued: int
    queued_by_filter: dict[str, int]
    still_waiting: int
    gave_up: int
    cancelled: int
    departed: int
    ignored_departures: int
    provisioned: int  # on simulated hosts, through SimulatorDriver
    planned_on_real_hosts: int  # what-if bookings on recorded real hosts: nothing was done there
    waits: dict[str, dict[str, float]]  # per priority class (and "all"): admitted requests' waits
    longest_still_waiting_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    decisions_per_second: float
    end: Quality
    peak: Quality  # at the moment the cloud held the most (dominant share of the demand)
    sim_seconds: float
    setup_seconds: float
    wall_seconds: float

    @property
    def placed(self) -> int:
        return self.placed_at_once + self.admitted_from_queue

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["placed"] = self.placed
        out["end"], out["peak"] = self.end.as_dict(), self.peak.as_dict()
        return out


def percentile(values: list[float] | Floats, q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default); 0 for no values."""
    return float(np.percentile(values, q)) if len(values) else 0.0


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
        # Room freed, or a waiting request left, since the last admission pass (see ``admit``).
        self.changed = False
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

    def decide(self, a: Arrival) -> tuple[int | None, str]:
        """One timed decision, and its claim in the table: the host id, or the filter that refused."""
        request = self.request(a)
        started = time.perf_counter()
        decision = self.engine.select(self.table, request)
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
        host_id, refused_by = self.decide(a)
        if host_id is not None:
            self.book(a, host_id, count_usage=True)
            self.tally["placed_at_once"] += 1
        elif a.wait:
            demand = (float(a.vcpus), float(a.ram_mib), float(a.disk_gib))
            w = Waiting(a.id, a.tenant, a.priority, self.now, demand)
            self.waiting[a.id] = (w, a)
            self.tally["queued"] += 1
            self.queued_by[refused_by] += 1
        else:
            self.tally["refused"] += 1
            self.refused_by[refused_by] += 1

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
            for key in [k for k, (w, _) in self.waiting.items() if self.now - w.enqueued_at > self.give_up]:
                del self.waiting[key]
                self.tally["gave_up"] += 1
                self.changed = True
        # Between releases room only shrinks, so a pass with no release since the last one admits
        # nothing (what it would try was refused then, or waited behind an overdue request that
        # still waits): skipping it is exact, and spares a full engine run per waiting request.
        if not self.waiting or not self.changed:
            return
        self.changed = False
        admission_pass(
            [w for w, _ in self.waiting.values()], self.now, self.policy, self.usage,
            self.capacity_total.tolist(), self._try_waiting,
        )  # fmt: skip

    def _try_waiting(self, w: Waiting) -> bool:
        a = self.waiting[w.key][1]
        host_id, _ = self.decide(a)
        if host_id is None:
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


class Simulator:
    """Replays traces; ``tick`` is the period of admission passes (the beat's NUBIS_QUEUE_SECONDS)."""

    def __init__(
        self,
        tick: float = 15.0,
        give_up: float | None = None,
        observer: Callable[[SimState, Event | None], None] | None = None,
    ) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.tick, self.give_up, self.observer = tick, give_up, observer

    def run(
        self,
        trace: Trace,
        engine: Engine | None = None,
        policy: QueuePolicy | None = None,
        until: float | None = None,
    ) -> Report:
        """Replay ``trace`` until no event is left (or until time ``until``) and report."""
        started = time.perf_counter()
        state = SimState(trace, engine or Engine(), policy or QueuePolicy(), self.give_up)
        setup = time.perf_counter() - started
        seq = itertools.count()
        # (time, sequence, event); the sequence keeps the trace's order among simultaneous events.
        # Ends of life and ticks are pushed as they become known; None is a tick.
        heap: list[tuple[float, int, Event | None]] = [(e.t, next(seq), e) for e in trace.events]
        heapq.heapify(heap)
        tick_due = False
        while heap:
            t, _, event = heapq.heappop(heap)
            if until is not None and t > until:
                break
            state.now = t
            if event is None:
                tick_due = False
                state.admit()
            elif isinstance(event, Departure):
                state.depart(event.id)
                state.admit()
            else:
                state.arrive(event)
            # A life starts when the request is placed: at once, or when a pass admits it.
            for a in state.started:
                if a.lifetime is not None:
                    heapq.heappush(heap, (t + a.lifetime, next(seq), Departure(t + a.lifetime, a.id)))
            state.started.clear()
            # Periodic passes while someone waits and something is still to happen.
            if state.waiting and heap and not tick_due:
                heapq.heappush(heap, (t + self.tick, next(seq), None))
                tick_due = True
            if self.observer is not None:
                self.observer(state, event)
        return _report(state, setup, time.perf_counter() - started)


def _report(state: SimState, setup: float, wall: float) -> Report:
    times = np.array(state.times)
    waits: dict[str, dict[str, float]] = {}
    every: list[float] = []
    for p, values in state.waits.items():
        every += values
        waits[PRIORITY_NAMES[p]] = _summary(values)
    waits["all"] = _summary(every)
    tally = state.tally
    waiting = state.waiting.values()
    return Report(
        hosts=len(state.trace.hosts),
        simulated_hosts=int(state.simulated.sum()),
        instances_at_start=len(state.trace.instances),
        events=len(state.trace.events),
        decisions=len(times),
        placed_at_once=tally["placed_at_once"],
        admitted_from_queue=tally["admitted_from_queue"],
        refused=tally["refused"],
        refused_by_filter=dict(state.refused_by),
        queued=tally["queued"],
        queued_by_filter=dict(state.queued_by),
        still_waiting=len(state.waiting),
        gave_up=tally["gave_up"],
        cancelled=tally["cancelled"],
        departed=tally["departed"],
        ignored_departures=tally["ignored_departures"],
        provisioned=tally["provisioned"],
        planned_on_real_hosts=tally["planned_on_real_hosts"],
        waits=waits,
        longest_still_waiting_s=max((state.now - w.enqueued_at for w, _ in waiting), default=0.0),
        p50_ms=percentile(times, 50) * 1000,
        p99_ms=percentile(times, 99) * 1000,
        mean_ms=float(times.mean()) * 1000 if len(times) else 0.0,
        decisions_per_second=len(times) / float(times.sum()) if times.sum() > 0 else 0.0,
        end=state.quality(),
        peak=state.peak,
        sim_seconds=state.now,
        setup_seconds=round(setup, 4),
        wall_seconds=round(wall, 4),
    )


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p99_s": round(percentile(values, 99), 3),
        "max_s": round(max(values, default=0.0), 3),
    }
