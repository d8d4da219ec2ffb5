"""Benchmark: placement decisions of the scheduler engine at 1,000, 10,000 and 100,000 hosts.

For each size, a simulated cloud (hosts of a few shapes, each already running ten instances of
random sizes) takes a stream of requests. Each request is one ``Engine.select`` over the numpy
column table, then a claim into it, as the portal does. Reported: p50 and p99 per decision and
decisions per second.

In the same run, a Nova-style baseline takes the same requests: a Python loop asking per-host
filter objects ``host_passes`` and per-host weigher objects for a weight, then sorting (the shape
of nova.scheduler.filter_scheduler). It gets fewer requests at the larger sizes, where each of its
decisions takes long; the count is printed.

Placement quality: empty hosts of one shape take a stream of random requests with the packing
weighers until the first one fails; hosts used is compared with the lower bound
ceil(sum of demand / host capacity), taken over each resource.

    .venv/bin/python bench/placement.py [--sizes 1000 10000 100000] [--requests 2000] [--seed 1]

Pure computation: no database, no agent. Writes bench/results/placement.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scheduler.engine import PACK, SPREAD, Engine, HostRow, HostTable, Request  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "placement.json"
SHAPES = ((16, 65536, 1000), (32, 131072, 2000), (64, 262144, 4000))  # vCPUs, RAM MiB, disk GiB
FLAVORS = ((1, 1024, 10), (2, 2048, 20), (2, 4096, 40), (4, 8192, 80), (8, 16384, 160))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def cloud(size: int, rng: random.Random) -> list[HostRow]:
    """``size`` hosts, each running ten random instances; a few disabled, dead or dedicated."""
    rows = []
    for i in range(1, size + 1):
        cpus, ram, disk = rng.choice(SHAPES)
        used = [rng.choice(FLAVORS) for _ in range(10)]
        rows.append(
            HostRow(
                id=i,
                name=f"sim-{i:06d}",
                vcpus=cpus,
                ram_mib=ram,
                disk_gib=disk,
                used_vcpus=sum(u[0] for u in used),
                used_ram_mib=sum(u[1] for u in used),
                used_disk_gib=sum(u[2] for u in used),
                enabled=rng.random() > 0.02,
                alive=rng.random() > 0.01,
                kvm=rng.random() > 0.1,
                dedicated_to=rng.choice((0,) * 19 + (rng.randint(1, 50),)),
                load=rng.random(),
            )
        )
    return rows


def requests(count: int, rng: random.Random) -> list[Request]:
    out = []
    for _ in range(count):
        vcpus, ram, disk = rng.choice(FLAVORS)
        out.append(Request(vcpus, ram, disk, tenant_id=rng.randint(1, 60), needs_kvm=rng.random() < 0.3))
    return out


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


NOVA_FILTERS = (ComputeFilter(), CapabilityFilter(), AggregateFilter(), ResourceFilter())
NOVA_WEIGHERS = (
    FreeShareWeigher(1, SPREAD["ram"]),
    FreeShareWeigher(0, SPREAD["cpu"]),
    FreeShareWeigher(2, SPREAD["disk"]),
    LoadWeigher(SPREAD["load"]),
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
def measure_engine(size: int, count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    rows = cloud(size, rng)
    started = time.perf_counter()
    table = HostTable(rows)
    build_s = time.perf_counter() - started
    engine = Engine(weighers=SPREAD)
    stream = requests(count, rng)
    times: list[float] = []
    placed = 0
    for req in stream:
        t0 = time.perf_counter()
        decision = engine.select(table, req)
        if decision.host_id is not None:
            table.claim(decision.host_id, req)
            placed += 1
        times.append(time.perf_counter() - t0)
    return {
        "hosts": size,
        "decisions": count,
        "placed": placed,
        "table_build_s": round(build_s, 4),
        "p50_ms": percentile(times, 50) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
        "per_second": count / sum(times),
    }


def measure_nova(size: int, count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    hosts = [HostState(r) for r in cloud(size, rng)]
    stream = requests(count, rng)
    times = []
    for req in stream:
        t0 = time.perf_counter()
        nova_select(hosts, req)
        times.append(time.perf_counter() - t0)
    return {
        "hosts": size,
        "decisions": count,
        "p50_ms": percentile(times, 50) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
        "per_second": count / sum(times),
    }


def measure_packing(hosts: int, seed: int) -> dict[str, Any]:
    """Fill empty hosts of one shape with PACK until a request fails; hosts used vs the lower bound."""
    rng = random.Random(seed)
    cpus, ram, disk = SHAPES[0]
    table = HostTable(
        HostRow(id=i, name=f"p-{i}", vcpus=cpus, ram_mib=ram, disk_gib=disk, cpu_ratio=1.0)
        for i in range(1, hosts + 1)
    )
    engine = Engine(weighers=PACK)
    demand = [0, 0, 0]
    placed = 0
    # Stop well before the cloud is full: the bound is about hosts a steady stream needs, not the
    # last scraps of room.
    while placed < hosts * 4:
        vcpus, ram_mib, disk_gib = rng.choice(FLAVORS)
        req = Request(vcpus, ram_mib, disk_gib)
        decision = engine.select(table, req)
        if decision.host_id is None:
            break
        table.claim(decision.host_id, req)
        demand = [demand[0] + vcpus, demand[1] + ram_mib, demand[2] + disk_gib]
        placed += 1
    used_hosts = int((table.used.sum(axis=0) > 0).sum())
    bound = max(math.ceil(d / c) for d, c in zip(demand, (cpus, ram, disk), strict=True))
    return {
        "hosts": hosts,
        "instances": placed,
        "hosts_used": used_hosts,
        "lower_bound": bound,
        "ratio": used_hosts / bound,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--requests", type=int, default=2000, help="engine decisions per size (2000)")
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
        f"{'hosts':>8} {'engine p50':>11} {'p99':>8} {'dec/s':>9} | {'nova p50':>9} {'p99':>9} {'dec/s':>7}"
    )
    print(f"{header} | speed-up")
    for size in args.sizes:
        engine = measure_engine(size, args.requests, args.seed)
        # Size the baseline's sample to its time budget, from one timed decision.
        probe = measure_nova(size, 3, args.seed)
        count = max(5, min(args.requests, int(args.baseline_budget * probe["per_second"])))
        nova = measure_nova(size, count, args.seed)
        speedup = nova["p50_ms"] / engine["p50_ms"]
        results["sizes"].append({"engine": engine, "nova_baseline": nova, "speedup_p50": speedup})
        print(
            f"{size:>8} {engine['p50_ms']:>9.3f}ms {engine['p99_ms']:>6.3f}ms {engine['per_second']:>9.0f} | "
            f"{nova['p50_ms']:>7.2f}ms {nova['p99_ms']:>7.2f}ms {nova['per_second']:>7.1f} | "
            f"x{speedup:.0f} (baseline over {count} decisions)"
        )
    packing = measure_packing(1000, args.seed)
    results["packing"] = packing
    print(
        f"packing {packing['instances']} instances on {packing['hosts']} empty hosts: "
        f"{packing['hosts_used']} hosts used, lower bound {packing['lower_bound']}, "
        f"ratio {packing['ratio']:.3f} (goal <= 1.05)"
    )
    ten_k = next((s for s in results["sizes"] if s["engine"]["hosts"] == 10000), None)
    if ten_k is not None:
        results["goals"] = {
            "p99_at_10000_ms": ten_k["engine"]["p99_ms"],
            "p99_under_1ms": ten_k["engine"]["p99_ms"] <= 1.0,
            "speedup_at_least_20x": ten_k["speedup_p50"] >= 20,
            "packing_within_1_05": packing["ratio"] <= 1.05,
        }
        print(f"goals: {results['goals']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
