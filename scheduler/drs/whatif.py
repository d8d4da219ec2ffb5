"""What-if: a DRS pass on a copy of today's cluster in the simulator, with changes; nothing moves.

The copy is ``scheduler.simulate.record`` (hosts, what each instance holds) in a ``SimState``: the
engine with the production filters and weighers decides on its table exactly as placement does on
the real one. The changes, in this order:

1. a host's capacity (CPUs, RAM) changed;
2. a host put in maintenance: its running and stopped instances are evacuated one by one in the
   order maintenance takes them (priority, then age), each to the host the engine picks with the
   claims of the moves before it counted, as ``compute.services.evacuation`` does for real;
3. N instances of a flavor added, placed by the engine as arrivals (their demand a share of
   their size, ``busy``);
4. the threshold level changed.

Then the balancer's pass runs on the result. The answer gives the loads today, after the changes,
and after the pass, with every predicted move (evacuation and balancing) explained.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scheduler.drs.levels import threshold
from scheduler.drs.model import Cluster, move_cost
from scheduler.drs.plan import plan
from scheduler.engine import Engine, Request
from scheduler.queueing import QueuePolicy
from scheduler.simulate import Arrival, SimState, Trace

WHAT_IF_TENANT = 0  # added instances belong to no tenant: dedicated hosts refuse them


@dataclass
class Changes:
    """What a what-if changes (each optional)."""

    maintenance: list[int] = field(default_factory=list)  # host ids, each emptied in turn
    capacity: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)  # id -> (cpus, MiB)
    add_count: int = 0
    add_flavor: dict[str, Any] = field(default_factory=dict)  # vcpus, ram_mib, disk_gib, kvm, live
    busy: float = 1.0  # demand of an added instance, as a share of its size
    level: int | None = None


def _resize(trace: Trace, cluster: Cluster, changes: Changes) -> Trace:
    hosts = []
    for row in trace.hosts:
        cpus, ram = changes.capacity.get(row.id, (None, None))
        hosts.append(replace(row, vcpus=cpus or row.vcpus, ram_mib=ram or row.ram_mib))
        j = int(np.flatnonzero(cluster.host_ids == row.id)[0]) if row.id in cluster.host_ids else None
        if j is not None:
            cluster.cpus[j] = float(cpus or cluster.cpus[j])
            cluster.ram[j] = float(ram or cluster.ram[j])
    return replace(
        trace, hosts=[replace(h, enabled=h.enabled and h.id not in changes.maintenance) for h in hosts]
    )


def _request(c: Cluster, i: int, state: SimState, group_names: list[str]) -> Request:
    g = int(c.group[i])
    name = group_names[g] if g >= 0 else ""
    members = state.members.get(name, Counter()) if name else Counter()
    here = int(c.host_ids[int(c.host[i])])
    others = Counter(members)
    others[here] -= 1
    return Request(
        vcpus=int(c.size[0, i]),
        ram_mib=int(c.size[1, i]),
        disk_gib=int(c.size[2, i]),
        tenant_id=int(c.tenant[i]),
        needs_kvm=bool(c.needs_kvm[i]),
        needs_iommu=bool(c.needs_iommu[i]),
        group_policy=c.group_policy[g] if g >= 0 else "",
        group_hosts=frozenset(h for h, n in others.items() if n > 0),
    )


def _evacuate(
    c: Cluster, state: SimState, engine: Engine, host_id: int, order: list[int], group_names: list[str]
) -> dict[str, Any]:
    """Each instance off ``host_id`` in ``order`` (instance ids), to the engine's choice."""
    moves, blocked = [], []
    row_of = {int(iid): i for i, iid in enumerate(c.inst_ids.tolist())}
    for iid in order:
        i = row_of.get(iid)
        if i is None:
            continue
        request = _request(c, i, state, group_names)
        decision = engine.select(state.table, request)
        if decision.host_id is None:
            blocked.append({"instance": iid, "name": c.inst_names[i], "reason": decision.error})
            continue
        state.table.release(host_id, request)
        state.table.claim(decision.host_id, request)
        g = int(c.group[i])
        if g >= 0:
            members = state.members.setdefault(group_names[g], Counter())
            members[host_id] -= 1
            members[decision.host_id] += 1
        target = int(np.flatnonzero(c.host_ids == decision.host_id)[0])
        moves.append(
            {
                "instance": iid,
                "name": c.inst_names[i],
                "source": c.host_names[int(c.host[i])],
                "target": c.host_names[target],
                "live": bool(c.live[i]),
                "why": decision.as_dict().get("top", [])[:3],
            }
        )
        c.host[i] = target
    return {"moves": moves, "blocked": blocked}


def _add(c: Cluster, state: SimState, changes: Changes) -> tuple[Cluster, list[dict[str, Any]]]:
    flavor = changes.add_flavor
    placed: list[dict[str, Any]] = []
    rows: list[int] = []
    next_id = int(max(c.inst_ids.max(initial=0), max((h.id for h in state.trace.hosts), default=0))) + 1
    for k in range(changes.add_count):
        arrival = Arrival(
            t=0.0,
            id=next_id + k,
            vcpus=int(flavor["vcpus"]),
            ram_mib=int(flavor["ram_mib"]),
            disk_gib=int(flavor["disk_gib"]),
            tenant=WHAT_IF_TENANT,
            kvm=bool(flavor.get("kvm")),
        )
        host_id, refused = state.decide(arrival)
        if host_id is None:
            placed.append({"name": f"new-{k + 1}", "host": None, "reason": f"no valid host ({refused})"})
            continue
        state.book(arrival, host_id, count_usage=True)
        rows.append(int(np.flatnonzero(c.host_ids == host_id)[0]))
        placed.append({"name": f"new-{k + 1}", "host": c.host_names[rows[-1]]})
    if not rows:
        return c, placed
    n = len(rows)
    live = bool(flavor.get("live", True))
    size = np.array([[flavor["vcpus"], flavor["ram_mib"], flavor["disk_gib"]]] * n, dtype=np.float64).T
    grown = replace(
        c,
        inst_ids=np.concatenate([c.inst_ids, np.arange(next_id, next_id + n, dtype=np.int64)]),
        inst_names=[*c.inst_names, *[p["name"] for p in placed if p["host"]]],
        host=np.concatenate([c.host, np.array(rows, dtype=np.int64)]),
        cpu=np.concatenate([c.cpu, np.full(n, float(flavor["vcpus"]) * changes.busy)]),
        ram_demand=np.concatenate([c.ram_demand, np.full(n, float(flavor["ram_mib"]) * changes.busy)]),
        size=np.hstack([c.size, size]),
        live=np.concatenate([c.live, np.full(n, live)]),
        cost=np.concatenate([c.cost, np.full(n, move_cost(live, float(flavor["ram_mib"])))]),
        tenant=np.concatenate([c.tenant, np.zeros(n, dtype=np.int64)]),
        group=np.concatenate([c.group, np.full(n, -1, dtype=np.int64)]),
        needs_kvm=np.concatenate([c.needs_kvm, np.full(n, bool(flavor.get("kvm")))]),
        needs_iommu=np.concatenate([c.needs_iommu, np.zeros(n, dtype=np.bool_)]),
        ha=np.concatenate([c.ha, np.zeros(n, dtype=np.bool_)]),
        fixed=[*c.fixed, *[""] * n],
        contention=[*(c.contention or [""] * c.m), *[""] * n],
    )
    return grown, placed


def what_if(
    cluster: Cluster,
    trace: Trace,
    engine: Engine,
    changes: Changes,
    level: int,
    evacuation_order: dict[int, list[int]],
    group_names: list[str],
    moved_recently: frozenset[int] = frozenset(),
) -> dict[str, Any]:
    """The predicted loads and moves of ``changes`` on ``cluster`` (recorded as ``trace``).

    ``evacuation_order``: per host in maintenance, its instance ids in the order maintenance takes
    them; ``group_names``: the trace's name of each of the cluster's server groups. Nothing here
    touches the database or a host.
    """
    c = replace(cluster, host=cluster.host.copy(), cpus=cluster.cpus.copy(), ram=cluster.ram.copy())
    today = cluster.loads().tolist()
    trace = _resize(trace, c, changes)
    state = SimState(trace, engine, QueuePolicy(), None)
    evacuations = {}
    for host_id in changes.maintenance:
        j = int(np.flatnonzero(c.host_ids == host_id)[0])
        evacuations[c.host_names[j]] = _evacuate(
            c, state, engine, host_id, evacuation_order.get(host_id, []), group_names
        )
    c.usable = c.usable & ~np.isin(c.host_ids, np.array(changes.maintenance, dtype=np.int64))
    c, placed = _add(c, state, changes)
    c.capacity = state.table.capacity.copy()
    c.reserved = state.table.used.copy()
    changed = c.loads().tolist()
    result = plan(c, threshold(changes.level or level), moved_recently=moved_recently)
    summary = result.as_dict()
    summary["hosts"] = [
        {"host": name, "today": round(t, 4), "changed": round(ch, 4), "after": round(a, 4)}
        for name, t, ch, a in zip(c.host_names, today, changed, result.loads_after, strict=True)
    ]
    summary["evacuations"] = evacuations
    summary["added"] = placed
    return summary
