"""Benchmark: placement decisions of the scheduler engine at 1,000, 10,000 and 100,000 simulated hosts.

For each size, the simulator's generator (``scheduler.simulate.generate``) makes the cloud: hosts
of a few shapes, a few disabled, dead, without KVM or dedicated to a tenant, each already running
ten instances. Every one of those instances is a record of its own (flavor, tenant, priority,
host), kept as numpy columns: a million records at 100,000 hosts. Then a stream of arrivals (some
in server groups, some needing KVM, some willing to wait) and departures. ``Simulator.run``
replays it through ``Engine.select`` with the spreading weighers and the admission queue, on a
simulated clock; each decision (one select over the column table, then the claim into it) is
timed. Reported: p50 and p99 per decision and decisions per second.

In the same run, a Nova-style baseline takes the same hosts (their usage summed from the same
instance records) and the same arrivals, in order: a Python loop asking per-host filter objects
``host_passes`` and per-host weigher objects for a weight, then sorting (the shape of
nova.scheduler.filter_scheduler), with the same filters and multipliers. It ignores departures
and the queue (each arrival is one decision). It gets fewer requests at the larger sizes, where
each of its decisions takes long; the count is printed.

Placement quality: 1,000 empty hosts of one shape (no CPU overcommit) take a stream of requests
that stay, with the packing weighers; hosts used is compared with the lower bound
ceil(sum of demand / host capacity), taken over each resource (the simulator's report).

    .venv/bin/python bench/placement.py [--sizes 1000 10000 100000] [--requests 2000] [--seed 1]

Pure computation: no database, no agent. Writes bench/results/placement.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scheduler.engine import PACK, SPREAD, Engine, HostRow, Request  # noqa: E402
from scheduler.simulate import Arrival, Simulator, Trace, generate, percentile  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "placement.json"
PACKING_SHAPE = (16, 65536, 1000)  # vCPUs, RAM MiB, disk GiB


# -- the Nova-style baseline -------------------------------------------------------------------------
# The shape of nova.scheduler: a HostState object per host, filter objects whose filter_all runs
# host_passes host by host, weigher objects that weigh each host, normalise over the candidates and
# add multiplier x weight onto a WeighedHost per host, then a sort. Same filters and weighers (with
# the same multipliers) as the engine's default pipeline, so both make the same kind of decision.
class HostState:
    def __init__(self, row: HostRow) -> None:
        self.row = row
        self.total = [
            math.floor(row.vcpus * row.cpu_ratio),
            math.floor(row.ram_mib * row.ram_ratio),
            math.floor(row.disk_gib * row.disk_ratio),
        ]
        self.free = [
            self.total[0] - row.used_vcpus,
            self.total[1] - row.used_ram_mib,
            self.total[2] - row.used_disk_gib,
        ]

    def consume(self, req: Request) -> None:
        self.free = [self.free[0] - req.vcpus, self.free[1] - req.ram_mib, self.free[2] - req.disk_gib]


class BaseFilter:
    def host_passes(self, host: HostState, req: Request) -> bool:
        raise NotImplementedError

    def filter_all(self, hosts: Iterable[HostState], req: Request) -> Iterator[HostState]:
        for host in hosts:
            if self.host_passes(host, req):
                yield host


class ComputeFilter(BaseFilter):
    def host_passes(self, host: HostState, req: Request) -> bool:
        return host.row.enabled and host.row.alive


class CapabilityFilter(BaseFilter):
    def host_passes(self, host: HostState, req: Request) -> bool:
        return (host.row.kvm or not req.needs_kvm) and (host.row.iommu or not req.needs_iommu)


class AggregateFilter(BaseFilter):
    def host_passes(self, host: HostState, req: Request) -> bool:
        return host.row.dedicated_to in (0, req.tenant_id)


class ServerGroupFilter(BaseFilter):
    """Nova's ServerGroupAntiAffinityFilter and ServerGroupAffinityFilter in one."""

    def host_passes(self, host: HostState, req: Request) -> bool:
        if not req.group_hosts:
            return True
        if req.group_policy == "anti-affinity":
            return host.row.id not in req.group_hosts
        if req.group_policy == "affinity":
            return host.row.id in req.group_hosts
        return True


class ResourceFilter(BaseFilter):
    def host_passes(self, host: HostState, req: Request) -> bool:
        return host.free[0] >= req.vcpus and host.free[1] >= req.ram_mib and host.free[2] >= req.disk_gib


class WeighedHost:
    def __init__(self, host: HostState) -> None:
        self.obj = host
        self.weight = 0.0


class BaseWeigher:
    multiplier = 1.0

    def _weigh_object(self, host: HostState, req: Request) -> float:
        raise NotImplementedError

    def weigh_objects(self, weighed: list[WeighedHost], req: Request) -> list[float]:
        raw = [self._weigh_object(w.obj, req) for w in weighed]
        low, high = min(raw), max(raw)
        return [(v - low) / (high - low) if high > low else 0.0 for v in raw]


class FreeShareWeigher(BaseWeigher):
    def __init__(self, column: int, multiplier: float) -> None:
        self.column, self.multiplier = column, multiplier

    def _weigh_object(self, host: HostState, req: Request) -> float:
        need = (req.vcpus, req.ram_mib, req.disk_gib)[self.column]
        return (host.free[self.column] - need) / max(host.total[self.column], 1)


class LoadWeigher(BaseWeigher):
    def __init__(self, multiplier: float) -> None:
        self.multiplier = multiplier

    def _weigh_object(self, host: HostState, req: Request) -> float:
        return 1.0 - host.row.load


class SoftAffinityWeigher(BaseWeigher):
    def __init__(self, multiplier: float) -> None:
        self.multiplier = multiplier

    def _weigh_object(self, host: HostState, req: Request) -> float:
        member = 1.0 if host.row.id in req.group_hosts else 0.0
        if req.group_policy == "soft-affinity":
            return member
        if req.group_policy == "soft-anti-affinity":
            return 1.0 - member
        return 0.0


NOVA_FILTERS = (ComputeFilter(), CapabilityFilter(), AggregateFilter(), ServerGroupFilter(), ResourceFilter())
NOVA_WEIGHERS = (
    FreeShareWeigher(1, SPREAD["ram"]),
    FreeShareWeigher(0, SPREAD["cpu"]),
    FreeShareWeigher(2, SPREAD["disk"]),
    LoadWeigher(SPREAD["load"]),
    SoftAffinityWeigher(SPREAD["soft_affinity"]),
)


def nova_select(hosts: list[HostState], req: Request) -> HostState | None:
    passing: Iterable[HostState] = hosts
    for f in NOVA_FILTERS:
        passing = list(f.filter_all(passing, req))
    if not passing:
        return None
    weighed = [WeighedHost(h) for h in passing]
    for weigher in NOVA_WEIGHERS:
        for w, score in zip(weighed, weigher.weigh_objects(weighed, req), strict=True):
            w.weight += weigher.multiplier * score
    weighed.sort(key=lambda w: w.weight, reverse=True)
    chosen = weighed[0].obj
    chosen.consume(req)
    return chosen


# -- measurements --------------------------------------------------------------------------------------
def make_cloud(size: int, requests: int, seed: int) -> tuple[Trace, dict[str, Any]]:
    """The simulator's cloud of ``size`` hosts with ten instance records each, and its stream."""
    started = time.perf_counter()
    trace = generate(hosts=size, instances_per_host=10, seed=seed, arrivals=requests)
    took = time.perf_counter() - started
    return trace, {
        "hosts": size,
        "instance_records": len(trace.instances),
        "instance_records_mb": round(trace.instances.nbytes() / 2**20, 1),
        "arrivals": len(trace.arrivals()),
        "departures": len(trace.events) - len(trace.arrivals()),
        "generate_s": round(took, 3),
    }


def measure_engine(trace: Trace) -> dict[str, Any]:
    report = Simulator().run(trace, engine=Engine(weighers=SPREAD))
    return {
        "hosts": report.hosts,
        "decisions": report.decisions,
        "placed": report.placed,
        "refused": report.refused,
        "refused_by_filter": report.refused_by_filter,
        "queued": report.queued,
        "admitted_from_queue": report.admitted_from_queue,
        "setup_s": report.setup_seconds,
        "run_s": report.wall_seconds,
        "p50_ms": report.p50_ms,
        "p99_ms": report.p99_ms,
        "per_second": report.decisions_per_second,
    }


def measure_nova(trace: Trace, count: int) -> dict[str, Any]:
    hosts = [HostState(r) for r in trace.rows()]
    members: dict[str, set[int]] = {}
    times = []
    for a in trace.arrivals()[:count]:
        req = _request(a, trace, members)
        t0 = time.perf_counter()
        chosen = nova_select(hosts, req)
        times.append(time.perf_counter() - t0)
        if chosen is not None and a.group:
            members.setdefault(a.group, set()).add(chosen.row.id)
    return {
        "hosts": len(hosts),
        "decisions": len(times),
        "p50_ms": percentile(times, 50) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
        "per_second": len(times) / sum(times),
    }


def _request(a: Arrival, trace: Trace, members: dict[str, set[int]]) -> Request:
    return Request(
        a.vcpus,
        a.ram_mib,
        a.disk_gib,
        tenant_id=a.tenant,
        needs_kvm=a.kvm,
        needs_iommu=a.iommu,
        group_policy=trace.groups.get(a.group, "") if a.group else "",
        group_hosts=frozenset(members.get(a.group, ())),
    )


def measure_packing(hosts: int, seed: int) -> dict[str, Any]:
    """Fill empty hosts of one shape with PACK; hosts used vs the lower bound, from the simulator."""
    trace = generate(
        hosts=hosts,
        instances_per_host=0,
        seed=seed,
        arrivals=hosts * 4,
        departures=0,
        lifetime=None,
        wait_share=0.0,
        group_share=0.0,
        shapes=(PACKING_SHAPE,),
        cpu_ratio=1.0,
        mixed=False,
    )
    report = Simulator().run(trace, engine=Engine(weighers=PACK))
    return {
        "hosts": hosts,
        "instances": report.placed,
        "refused": report.refused,
        "hosts_used": report.end.hosts_used,
        "lower_bound": report.end.bound,
        "lower_bound_per_resource": report.end.lower_bound,
        "ratio": report.end.ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--requests", type=int, default=2000, help="arrivals per size (2000)")
    parser.add_argument("--baseline-budget", type=float, default=20.0, help="seconds per size for Nova (20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "benchmark": "placement",
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "sizes": [],
    }
    header = (
        f"{'hosts':>8} {'records':>9} {'engine p50':>11} {'p99':>8} {'dec/s':>9} | "
        f"{'nova p50':>9} {'p99':>9} {'dec/s':>7}"
    )
    print(f"{header} | speed-up")
    for size in args.sizes:
        trace, cloud = make_cloud(size, args.requests, args.seed)
        engine = measure_engine(trace)
        # Size the baseline's sample to its time budget, from a few timed decisions.
        probe = measure_nova(trace, 3)
        count = max(5, min(args.requests, int(args.baseline_budget * probe["per_second"])))
        nova = measure_nova(trace, count)
        speedup = nova["p50_ms"] / engine["p50_ms"]
        results["sizes"].append(
            {"cloud": cloud, "engine": engine, "nova_baseline": nova, "speedup_p50": speedup}
        )
        print(
            f"{size:>8} {cloud['instance_records']:>9} {engine['p50_ms']:>9.3f}ms {engine['p99_ms']:>6.3f}ms "
            f"{engine['per_second']:>9.0f} | {nova['p50_ms']:>7.2f}ms {nova['p99_ms']:>7.2f}ms "
            f"{nova['per_second']:>7.1f} | x{speedup:.0f} (baseline over {count} decisions)"
        )
        e = engine
        print(
            f"{'':>8} cloud made in {cloud['generate_s']:.2f} s ({cloud['instance_records_mb']} MB of "
            f"records), set up in {e['setup_s']:.2f} s; {e['decisions']} decisions for "
            f"{cloud['arrivals']} arrivals and {cloud['departures']} departures: placed {e['placed']}, "
            f"refused {e['refused']} {e['refused_by_filter']}, queued {e['queued']}"
        )
        del trace
    packing = measure_packing(1000, args.seed)
    results["packing"] = packing
    print(
        f"packing {packing['instances']} instances on {packing['hosts']} empty hosts: "
        f"{packing['hosts_used']} hosts used, lower bound {packing['lower_bound']} "
        f"{packing['lower_bound_per_resource']}, ratio {packing['ratio']:.3f} (goal <= 1.05)"
    )
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    ten_k = next((s for s in results["sizes"] if s["engine"]["hosts"] == 10000), None)
    if ten_k is not None:
        results["goals"] = {
            "p99_at_10000_ms": ten_k["engine"]["p99_ms"],
            "p99_under_1ms": ten_k["engine"]["p99_ms"] <= 1.0,
            "speedup_at_least_20x": ten_k["speedup_p50"] >= 20,
            "packing_within_1_05": packing["ratio"] <= 1.05,
        }
        print(f"goals: {results['goals']}")
    print(f"peak memory (RSS): {results['peak_rss_mb']} MB")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
