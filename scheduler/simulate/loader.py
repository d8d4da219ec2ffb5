"""The strict trace reader: every field and every reference checked, errors naming line and field."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from scheduler.engine import HostRow
from scheduler.simulate.trace import (
    GROUP_POLICIES,
    TRACE_VERSION,
    Arrival,
    Departure,
    Event,
    Instances,
    Trace,
    TraceError,
)

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


def read(lines: Iterable[str]) -> Trace:
    """A trace from its lines; a malformed one raises TraceError naming the line and the field."""
    return _Reader().read(lines)
