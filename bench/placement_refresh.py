"""Benchmark: one placement decision read from the database, with the host table rebuilt each time
(the baseline) against the per-process table refreshed incrementally (scheduler.hosts.CachedTable).

The database gets ``--hosts`` real-looking host rows (not simulated: the placement path reads only
those), ``--per-host`` instances on each, and live heartbeats. Each round times one decision both
ways (alternating which goes first): read the table, then ``Engine.select``. Between rounds, one
host is edited (a save: the cached table re-reads that one host) so the incremental path is
measured doing real work, not only its cheap no-change case.

    DATABASE_URL=postgres://... .venv/bin/python bench/placement_refresh.py [--hosts 2000] [--per-host 10]

Without DATABASE_URL it uses SQLite in a temporary directory. The rows it makes are removed at the
end. Writes bench/results/placement_refresh.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "placement_refresh.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--per-host", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        os.environ["NUBIS_DATA_DIR"] = tempfile.mkdtemp(prefix="nubis-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from compute.models import Flavor, Host, Image, ImageKind, Instance, InstanceState
    from scheduler.engine import HostTable, Request
    from scheduler.hosts import CachedTable, host_rows
    from scheduler.services import engine
    from tenants.models import Quota, Tenant

    call_command("migrate", verbosity=0)
    tag = f"bref-{uuid.uuid4().hex[:6]}"
    now = timezone.now()
    tenant = Tenant.objects.create(name=tag, slug=tag)
    flavor = Flavor.objects.create(name=tag, vcpus=1, ram_mib=1024, disk_gib=10)
    image = Image.objects.create(
        name=tag, kind=ImageKind.KERNEL, os_name="b", disk_path="/x", sha256="0" * 64
    )
    hosts = Host.objects.bulk_create(
        Host(name=f"{tag}-{i}", uri="test:///", cpus=64, ram_mib=262144, disk_gib=4000, heartbeat_at=now)
        for i in range(args.hosts)
    )
    Instance.objects.unscoped().bulk_create(
        (
            Instance(
                tenant=tenant,
                name=f"{tag}-{h.pk}-{k}",
                flavor=flavor,
                image=image,
                host=h,
                state=InstanceState.RUNNING,
                vcpus=1 + k % 4,
                ram_mib=1024 * (1 + k % 8),
                current_ram_mib=1024 * (1 + k % 8),
                disk_gib=10,
            )
            for h in hosts
            for k in range(args.per_host)
        ),
        batch_size=5000,
    )
    pipeline = engine()
    request = Request(vcpus=2, ram_mib=4096, disk_gib=20, tenant_id=tenant.pk)
    cache = CachedTable()
    with cache.use():
        pass  # the first build is paid once per process; time the steady state
    timings: dict[str, list[float]] = {"rebuild": [], "incremental": []}
    try:
        for r in range(args.rounds):
            edited = hosts[r % len(hosts)]
            edited.cpu_ratio = 2.0 + (r % 3)
            edited.save()  # a slow-part change of one host, as an operator's edit
            ways = ["rebuild", "incremental"] if r % 2 == 0 else ["incremental", "rebuild"]
            for way in ways:
                start = time.perf_counter()
                if way == "rebuild":
                    decision = pipeline.select(HostTable(host_rows()), request)
                else:
                    with cache.use() as table:
                        decision = pipeline.select(table, request)
                timings[way].append((time.perf_counter() - start) * 1000)
                assert decision.host_id is not None
    finally:
        Instance.objects.unscoped().filter(tenant=tenant).delete()
        Host.objects.filter(name__startswith=f"{tag}-").delete()
        flavor.delete()
        image.delete()
        Quota.objects.for_tenant(tenant).delete()
        tenant.delete()
    summary: dict[str, Any] = {
        way: {"p50_ms": round(percentile(v, 50), 2), "p99_ms": round(percentile(v, 99), 2)}
        for way, v in timings.items()
    }
    ratio = summary["rebuild"]["p50_ms"] / max(summary["incremental"]["p50_ms"], 1e-9)
    result = {
        "benchmark": "placement_refresh",
        "database": connection.vendor,
        "hosts": args.hosts,
        "instances": args.hosts * args.per_host,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": summary,
        "speedup_p50": round(ratio, 2),
        "hosts_reread": cache.reloads["hosts"],
        "full_rebuilds": cache.reloads["full"],
    }
    print(
        f"{'table':<12} {'p50 ms':>8} {'p99 ms':>8}   ({args.hosts} hosts, {result['instances']} instances)"
    )
    for way, figures in summary.items():
        print(f"{way:<12} {figures['p50_ms']:>8} {figures['p99_ms']:>8}")
    print(f"incremental is {ratio:.1f}x faster at p50; hosts re-read: {cache.reloads['hosts']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
