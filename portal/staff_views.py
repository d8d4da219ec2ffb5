"""Staff pages beside Django admin: hosts (capabilities, capacity, load, maintenance) and the queue.

The pages read what the scheduler reads: ``scheduler.hosts.host_rows`` and ``HostTable`` for
capacity after overcommit and what is used, ``scheduler.admission`` for the queue's order and each
request's standing. The only write, the maintenance toggle, goes through
``compute.services.hosts.host_maintenance_set``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import Count, F, Q, QuerySet, prefetch_related_objects
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from compute.models import Host, HostState, Instance, InstanceState
from compute.selectors import operations_waiting
from compute.services.hosts import host_maintenance_set
from core.errors import ServiceError
from core.preflight import check_redis
from scheduler.admission import queue_entries, queue_statuses
from scheduler.engine import HostTable
from scheduler.hosts import host_rows
from scheduler.models import QueueEntry, QueueState
from security.audit import Actor
from tenants.models import PriorityClass

HOSTS_PER_PAGE = 50
RECENT_ADMISSIONS = 20
MAINTENANCE_PERMISSION = "compute.change_host"

View = Callable[..., HttpResponse]


def staff_required(view: View) -> View:
    """Let staff in; send anonymous users to the login page and refuse other users with 403.

    Unlike admin's ``staff_member_required`` (which sends a signed-in non-staff user to the admin
    login as if they were anonymous), a signed-in user who is not staff is told no.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return wrapper


# -- reads -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gauge:
    """One resource of one host: what is used of the capacity after overcommit."""

    label: str
    unit: str
    used: float
    capacity: float

    @property
    def pct(self) -> int:
        if self.capacity <= 0:
            return 100 if self.used > 0 else 0
        return round(self.used * 100 / self.capacity)

    @property
    def width(self) -> int:
        return max(0, min(self.pct, 100))

    @property
    def level(self) -> str:
        return "err" if self.pct >= 90 else "warn" if self.pct >= 70 else ""


@dataclass(frozen=True)
class HostLine:
    """A host as the staff page shows it."""

    host: Host
    gauges: list[Gauge]
    ratios: tuple[float, float, float]
    load: Gauge  # CPU load over the last minute, in percent of the host's CPUs
    alive: bool
    heartbeat_age: str
    instances: int
    running: int


def age_text(then: datetime | None, now: datetime) -> str:
    """How long ago, in the largest whole unit ("12 s", "5 min", "3 h", "2 d"); "never" for None."""
    if then is None:
        return "never"
    return duration_text((now - then).total_seconds())


def duration_text(seconds: float) -> str:
    """A duration in its largest whole unit: "12 s", "5 min", "3 h", "2 d"."""
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def hosts_overview(page_number: str | int | None) -> dict[str, Any]:
    """One page of hosts (real first, then simulated), with what the scheduler sees of each."""
    now = timezone.now()
    page: Page[Host] = Paginator(Host.objects.order_by("simulated", "name"), HOSTS_PER_PAGE).get_page(
        page_number
    )
    hosts = list(page.object_list)
    ids = [h.pk for h in hosts]
    rows = {row.id: row for row in host_rows(Host.objects.filter(pk__in=ids))}
    table = HostTable(rows.values())
    counts = {
        row["host_id"]: row
        for row in Instance.objects.unscoped()
        .filter(host_id__in=ids)
        .exclude(state=InstanceState.DELETED)
        .values("host_id")
        .annotate(n=Count("pk"), running=Count("pk", filter=Q(state=InstanceState.RUNNING)))
    }
    lines = []
    for host in hosts:
        i = table.index[host.pk]
        capacity, used, row = table.capacity[:, i], table.used[:, i], rows[host.pk]
        count = counts.get(host.pk, {})
        lines.append(
            HostLine(
                host=host,
                gauges=[
                    Gauge("vCPU", "", float(used[0]), float(capacity[0])),
                    Gauge("RAM", "MiB", float(used[1]), float(capacity[1])),
                    Gauge("Disk", "GiB", float(used[2]), float(capacity[2])),
                ],
                ratios=(row.cpu_ratio, row.ram_ratio, row.disk_ratio),
                load=Gauge("CPU load", "%", float(table.load[i]) * 100, 100.0),
                alive=bool(table.alive[i]),
                heartbeat_age=age_text(host.heartbeat_at, now),
                instances=int(count.get("n", 0)),
                running=int(count.get("running", 0)),
            )
        )
    totals = Host.objects.aggregate(
        real=Count("pk", filter=Q(simulated=False)),
        simulated=Count("pk", filter=Q(simulated=True)),
        **{str(state): Count("pk", filter=Q(state=state)) for state in HostState.values},
    )
    return {"page": page, "lines": lines, "totals": totals, "mode": settings.NUBIS_ADMISSION_MODE}


@dataclass(frozen=True)
class QueueLine:
    """A waiting request and where it stands."""

    entry: QueueEntry
    priority: str
    status: dict[str, Any]  # queue_statuses' answer for it
    waited: str
    estimate: str


@dataclass(frozen=True)
class RecentLine:
    """A request that left the queue (admitted, failed or cancelled) and how long it waited."""

    entry: QueueEntry
    priority: str
    waited: str


def _priority(value: int) -> str:
    return str(PriorityClass(value).label) if value in PriorityClass.values else str(value)


def _recent() -> QuerySet[QueueEntry]:
    finished = (QueueState.ADMITTED, QueueState.FAILED, QueueState.CANCELLED)
    return (
        QueueEntry.objects.unscoped()
        .filter(state__in=finished)
        .select_related("instance", "tenant")
        .order_by(F("finished_at").desc(nulls_last=True), "-pk")
    )


def queue_overview() -> dict[str, Any]:
    """The waiting requests in admission order with their standing, and the latest to leave."""
    entries = queue_entries()
    prefetch_related_objects(entries, "instance", "tenant")  # queue_entries reads the entries alone
    statuses = queue_statuses(entries)
    waiting = []
    for entry in entries:
        status = statuses[entry.instance_id]
        estimate = status["estimated_wait_s"]
        waiting.append(
            QueueLine(
                entry=entry,
                priority=_priority(entry.priority),
                status=status,
                waited=duration_text(status["waited_s"]),
                estimate="unknown" if estimate is None else duration_text(estimate),
            )
        )
    recent = [
        RecentLine(e, _priority(e.priority), age_text(e.enqueued_at, e.finished_at) if e.finished_at else "-")
        for e in _recent()[:RECENT_ADMISSIONS]
    ]
    return {
        "waiting": waiting,
        "recent": recent,
        "max_wait": duration_text(settings.NUBIS_QUEUE_MAX_WAIT),
        "give_up": duration_text(settings.NUBIS_QUEUE_GIVE_UP),
    }


# -- pages -----------------------------------------------------------------------------------------
def delivery_overview() -> dict[str, Any]:
    """The broker (the Redis of REDIS_URL) and the operations accepted that no agent claimed yet."""
    broker = check_redis()
    return {"broker": broker, "waiting": operations_waiting()}


def _hosts_page(request: HttpRequest, error: ServiceError | None = None, status: int = 200) -> HttpResponse:
    context = hosts_overview(request.GET.get("page"))
    context.update(delivery_overview())
    context["can_toggle"] = request.user.has_perm(MAINTENANCE_PERMISSION)
    context["error"] = error
    return render(request, "staff/hosts.html", context, status=status)


@staff_required
@require_GET
def hosts(request: HttpRequest) -> HttpResponse:
    return _hosts_page(request)


@staff_required
@require_POST
def host_maintenance(request: HttpRequest, pk: int) -> HttpResponse:
    """Put the host into maintenance (``on=1``: its instances move off first; with ``force=1`` at
    once) or take it out (``on=0``); needs change_host."""
    if not request.user.has_perm(MAINTENANCE_PERMISSION):
        raise PermissionDenied("changing a host's state needs the change_host permission")
    host = get_object_or_404(Host, pk=pk)
    on = request.POST.get("on", "")
    if on not in ("0", "1"):
        return _hosts_page(request, ServiceError("on", "choice", "on must be 1 or 0"), status=400)
    try:
        changed = host_maintenance_set(
            actor=Actor.from_request(request), host=host, on=on == "1", force=request.POST.get("force") == "1"
        )
    except ServiceError as exc:
        return _hosts_page(request, exc, status=exc.status)
    messages.success(request, f"Host {changed.name} is now {changed.get_state_display().lower()}.")
    return redirect("staff-hosts")


@staff_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    return render(request, "staff/queue.html", queue_overview())
