"""Benchmark: listing 50 instances per request out of 10,000 with the API's cursor pagination,
against DRF's default page-number pagination (the baseline) on the same queryset and serializer.

One tenant gets ``--instances`` instance rows (bulk-created records, nothing provisioned), each on
a network with two security groups, as the API lists them. Requests go through Django's real WSGI
handler (every middleware, token authentication, the rate limit in Redis, the tenant lookup,
rendering to JSON) in this one process and thread: one worker, no network.

- **Cursor**: ``GET /api/v1/tenants/<slug>/instances/?page_size=50`` (core.pagination, default
  ordering ``-created``), following the ``next`` links.
- **Baseline**: the same view body with ``rest_framework.pagination.PageNumberPagination``
  (``?page=N``: a COUNT and an OFFSET read) on the same queryset, ordering, serializer and context,
  mounted beside the real URLs for this run only.

Three series, each method alternating with the other: the first page, a deep page (95% of the
way, fetched again and again), and whole walks from the first page to the last.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python bench/api.py [--instances 10000]

Without DATABASE_URL it uses SQLite in a temporary directory. The rows it makes are removed at the
end. Writes bench/results/api.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "api.json"
HOST = "127.0.0.1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def figures(samples: list[float]) -> dict[str, float]:
    """p50/p99 in ms and requests per second of one worker (one request after the other)."""
    return {
        "requests": len(samples),
        "p50_ms": round(percentile(samples, 50) * 1000, 2),
        "p99_ms": round(percentile(samples, 99) * 1000, 2),
        "mean_ms": round(sum(samples) / len(samples) * 1000, 2),
        "rps": round(len(samples) / sum(samples), 1),
    }


def baseline_urls(module_name: str) -> None:
    """Mount the page-number baseline beside the real URLs (a URLconf module for this run)."""
    from django.urls import include, path
    from rest_framework.pagination import PageNumberPagination
    from rest_framework.request import Request
    from rest_framework.response import Response

    from compute.api.serializers import InstanceSerializer
    from compute.api.views.base import TenantView
    from compute.selectors import instance_rows, queue_context

    class Numbered(PageNumberPagination):
        page_size = 50
        page_size_query_param = "page_size"
        max_page_size = 200

    class BaselineInstanceList(TenantView):
        """InstanceListView's body with DRF's default page-number pagination."""

        def get(self, request: Request, tenant: str) -> Response:
            obj = self.tenant(request, tenant)
            rows = instance_rows(obj).order_by("-created", "-pk")
            paginator = Numbered()
            page = paginator.paginate_queryset(rows, request, view=self)
            data = InstanceSerializer(page, many=True, context=queue_context(obj)).data
            return paginator.get_paginated_response(data)

    module = types.ModuleType(module_name)
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("bench/baseline/<slug:tenant>/instances/", BaselineInstanceList.as_view()),
        path("", include("portal.urls")),
    ]
    sys.modules[module_name] = module


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--samples", type=int, default=300, help="requests per method, first and deep page")
    parser.add_argument("--walks", type=int, default=3, help="whole walks per method")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        os.environ["NUBIS_DATA_DIR"] = tempfile.mkdtemp(prefix="nubis-bench-")
    # The benchmark measures listing, not the rate limit: give its token a budget it cannot spend
    # (the limit's Redis round trip still happens on every request, on both paths).
    os.environ["NUBIS_API_RATE_TOKEN"] = "100000000/min"  # noqa: S105 - a rate, not a secret
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from compute.models import (
        Flavor,
        Image,
        ImageKind,
        Instance,
        InstanceState,
        Network,
        SecurityGroup,
    )
    from tenants.models import ApiToken, Membership, Quota, Role, Tenant
    from tenants.services.tokens import hash_token

    call_command("migrate", verbosity=0)
    baseline_urls("nubis_bench_api_urls")
    settings.ROOT_URLCONF = "nubis_bench_api_urls"

    tag = f"bapi-{uuid.uuid4().hex[:6]}"
    from django.contrib.auth.models import User

    tenant = Tenant.objects.create(name=tag, slug=tag)
    user = User.objects.create(username=tag)
    Membership.objects.create(tenant=tenant, user=user, role=Role.OWNER)
    raw = f"nubis_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    ApiToken.objects.unscoped().create(
        tenant=tenant, name=tag, prefix=raw[:12], key_hash=hash_token(raw), role=Role.VIEWER, created_by=user
    )
    flavor = Flavor.objects.create(name=tag, vcpus=1, ram_mib=64, disk_gib=1, public=False, tenant=tenant)
    image = Image.objects.create(
        name=tag, kind=ImageKind.KERNEL, os_name="b", sha256="0" * 64, public=False, tenant=tenant
    )
    network = Network.objects.create(tenant=tenant, name="net", cidr="10.77.0.0/16", gateway="10.77.0.1")
    groups = [SecurityGroup.objects.create(tenant=tenant, name=f"sg{i}") for i in range(2)]
    now = timezone.now()
    made = Instance.objects.unscoped().bulk_create(
        (
            Instance(
                tenant=tenant,
                name=f"i{i:05d}",
                flavor=flavor,
                image=image,
                state=InstanceState.RUNNING if i % 10 else InstanceState.STOPPED,
                network=network,
                ip_address=f"10.77.{i // 250}.{2 + i % 250}",
                created=now - timedelta(seconds=i),
            )
            for i in range(args.instances)
        ),
        batch_size=2000,
    )
    through = Instance.security_groups.through
    through.objects.bulk_create(
        (through(instance_id=m.pk, securitygroup_id=g.pk) for m in made for g in groups), batch_size=5000
    )

    del made  # 10,000 model objects: nothing to keep on the heap while measuring
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            # Planner statistics, as autovacuum keeps them for a table that grew this much; fresh
            # bulk-inserted rows without them get row estimates of 1 and a poor plan.
            cur.execute("ANALYZE compute_instance, compute_instance_security_groups")
    handler = WSGIHandler()
    auth = f"Bearer {raw}"

    def call(url: str) -> tuple[float, bytes]:
        """One GET through the WSGI handler: (seconds, body)."""
        parts = urlsplit(url)
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "SERVER_NAME": HOST,
            "SERVER_PORT": "80",
            "HTTP_HOST": HOST,
            "HTTP_ACCEPT": "application/json",
            "HTTP_AUTHORIZATION": auth,
            "REMOTE_ADDR": HOST,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        status: list[str] = []

        def start_response(
            line: str, headers: list[tuple[str, str]], exc: Any = None
        ) -> Callable[[bytes], object]:
            status.append(line)
            return lambda data: None

        start = time.perf_counter()
        body = b"".join(handler(environ, start_response))
        elapsed = time.perf_counter() - start
        if not status[0].startswith("200"):
            raise SystemExit(f"GET {url} answered {status[0]}: {body[:300]!r}")
        return elapsed, body

    size = args.page_size
    cursor_first = f"/api/v1/tenants/{tag}/instances/?page_size={size}"
    pages = -(-args.instances // size)

    def number_url(n: int) -> str:
        return f"/bench/baseline/{tag}/instances/?page={n}&page_size={size}"

    def cursor_walk(samples: list[float] | None = None) -> list[str]:
        """Follow next from the first page to the last; the URL of every page."""
        urls, url = [], cursor_first
        while url:
            urls.append(url)
            elapsed, body = call(url)
            if samples is not None:
                samples.append(elapsed)
            url = json.loads(body)["next"]
        return urls

    def number_walk(samples: list[float]) -> None:
        for n in range(1, pages + 1):
            samples.append(call(number_url(n))[0])

    def timed(series: str, way: str, url: str) -> Callable[[], None]:
        return lambda: samples[series][way].append(call(url)[0])

    def walked(way: str) -> Callable[[], None]:
        def run() -> None:
            if way == "cursor":
                cursor_walk(samples["walk"]["cursor"])
            else:
                number_walk(samples["walk"]["number"])

        return run

    samples: dict[str, dict[str, list[float]]] = {
        s: {"cursor": [], "number": []} for s in ("first", "deep", "walk")
    }

    try:
        cursor_urls = cursor_walk()  # warms every cache on the way, and finds the deep page's link
        number_walk([])
        deep = max(1, round(pages * 0.95))
        deep_cursor, deep_number = cursor_urls[deep - 1], number_url(deep)
        # Same rows on both deep pages, or the comparison is not fair.
        same = json.loads(call(deep_cursor)[1])["results"] == json.loads(call(deep_number)[1])["results"]
        # Freeze what start-up and the warm-up left on the heap (Django, DRF, the apps, numpy), as
        # a pre-forking server does: a full collection would otherwise scan all of it, about 100 ms
        # here, in the middle of whichever request set it off, and make p99 a lottery.
        gc.collect()
        gc.freeze()
        heap = gc.get_freeze_count()
        queries: dict[str, int] = {}
        for name, url in (
            ("cursor_first", cursor_first),
            ("cursor_deep", deep_cursor),
            ("number_first", number_url(1)),
            ("number_deep", deep_number),
        ):
            with CaptureQueriesContext(connection) as captured:
                call(url)
            queries[name] = len(captured)

        ways: dict[str, dict[str, Callable[[], None]]] = {
            "first": {
                "cursor": timed("first", "cursor", cursor_first),
                "number": timed("first", "number", number_url(1)),
            },
            "deep": {
                "cursor": timed("deep", "cursor", deep_cursor),
                "number": timed("deep", "number", deep_number),
            },
            "walk": {"cursor": walked("cursor"), "number": walked("number")},
        }
        for series, rounds in (("first", args.samples), ("deep", args.samples), ("walk", args.walks)):
            for r in range(rounds):
                for way in ("cursor", "number") if r % 2 == 0 else ("number", "cursor"):
                    ways[series][way]()
    finally:
        Instance.objects.unscoped().filter(tenant=tenant).delete()
        for model in (SecurityGroup, Network, ApiToken, Quota):
            model.objects.unscoped().filter(tenant=tenant).delete()
        flavor.delete()
        image.delete()
        tenant.delete()
        user.delete()

    summary: dict[str, dict[str, Any]] = {
        series: {"cursor": figures(by_way["cursor"]), "page_number": figures(by_way["number"])}
        for series, by_way in samples.items()
    }
    for figs in summary.values():
        c, n = figs["cursor"], figs["page_number"]
        figs["speedup"] = {
            "p50": round(n["p50_ms"] / c["p50_ms"], 2),
            "p99": round(n["p99_ms"] / c["p99_ms"], 2),
            "rps": round(c["rps"] / n["rps"], 2),
        }
    result: dict[str, Any] = {
        "benchmark": "api",
        "database": connection.vendor,
        "instances": args.instances,
        "page_size": size,
        "pages": pages,
        "deep_page": deep,
        "same_rows_on_the_deep_page": same,
        "queries_per_request": queries,
        "conn_max_age": connection.settings_dict.get("CONN_MAX_AGE"),
        "frozen_heap_objects": heap,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "results": summary,
        "samples_ms": {
            series: {way: [round(v * 1000, 2) for v in values] for way, values in by_way.items()}
            for series, by_way in samples.items()
        },
    }
    print(
        f"{args.instances} instances, {size} per page ({pages} pages; deep page = {deep}), "
        f"one worker, {connection.vendor}"
    )
    print(
        f"{'series':<7} {'pagination':<12} {'req':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'queries':>8}"
    )
    for series, figs in summary.items():
        for way, key in (("cursor", "cursor"), ("page_number", "number")):
            f = figs[way]
            q = queries.get(f"{key}_{'deep' if series == 'deep' else 'first'}", "")
            print(
                f"{series:<7} {way:<12} {f['requests']:>6} {f['p50_ms']:>8} {f['p99_ms']:>8} {f['rps']:>8} "
                f"{q if series != 'walk' else '':>8}"
            )
        s = figs["speedup"]
        print(f"{'':<7} cursor vs page number: p50 x{s['p50']}, p99 x{s['p99']}, req/s x{s['rps']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
