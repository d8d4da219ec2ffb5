"""Instance pages of the web UI: the list (live, in cursor pages), one instance's page, and the row
the list fetches for an instance it has not seen yet. The forms and actions are in
views_instance_actions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core import signing
from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from compute.models import (
    FloatingIP,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
    PortForward,
    SecurityGroup,
    Snapshot,
    Volume,
)
from compute.ui.forms import ResizeForm, flavor_summary
from core.pagination import MAX_PAGE_SIZE, beyond, encode
from scheduler.admission import queue_statuses
from scheduler.models import PlacementDecision, QueueEntry, QueueState
from tenants.access import tenant_for_request
from tenants.models import Role, Tenant

# The list's state filter: "active" hides what is gone or failed; the others are single states.
STATE_FILTERS = [("active", "Active"), ("", "All"), *InstanceState.choices]
PAGE = 50  # rows per page of the list by default (newest first); ?page_size= asks for 1 to 200
KEY = ("created", "pk")  # the list's order, newest first; the (tenant, created, id) index serves it
SALT = "nubis.ui.instances:{}"  # cursors are signed with the list's path: one tenant's list only


def instances_of(tenant: Tenant) -> Any:
    """The tenant's instances with what their rows show, in four queries whatever their number."""
    return (
        Instance.objects.for_tenant(tenant)
        .select_related("flavor", "image", "network", "server_group", "host", "migration_host")
        .prefetch_related(Prefetch("security_groups", queryset=SecurityGroup.objects.for_tenant(tenant)))
        .prefetch_related(Prefetch("floating_ips", queryset=FloatingIP.objects.for_tenant(tenant)))
    )


def instance_of(tenant: Tenant, pk: str) -> Instance:
    return get_object_or_404(instances_of(tenant).exclude(state=InstanceState.DELETED), uuid=pk)


@dataclass(frozen=True)
class ListFilters:
    """The list's filters: state ("active", "" for all, or one state), kind and a name or address."""

    state: str = "active"
    kind: str = ""
    q: str = ""

    @classmethod
    def of(cls, params: QueryDict) -> ListFilters:
        return cls(
            state=params.get("state", "active"),
            kind=params.get("kind", ""),
            q=params.get("q", "").strip(),  # a NUL never gets here (portal.query_strings)
        )

    def apply(self, rows: QuerySet[Instance]) -> QuerySet[Instance]:
        if self.state == "active":
            rows = rows.exclude(state__in=[InstanceState.DELETED, InstanceState.ERROR])
        elif self.state in InstanceState.values:
            rows = rows.filter(state=self.state)
        if self.kind in InstanceKind.values:
            rows = rows.filter(kind=self.kind)
        if self.q:
            rows = rows.filter(Q(name__icontains=self.q) | Q(ip_address__startswith=self.q))
        return rows

    def params(self) -> dict[str, str]:
        """The filters as query parameters (what the links of every page carry)."""
        return {"state": self.state, "kind": self.kind, "q": self.q}


@dataclass
class ListPage:
    """One page of the list: its rows, the cursors of its neighbours, and what was wrong with the request."""

    rows: list[Instance]
    first: bool
    newer: str | None = None  # cursor of the page of newer instances
    older: str | None = None  # cursor of the page of older instances
    newest: bool = False  # reached going newer, and nothing is newer: the first page's rows
    errors: list[str] = field(default_factory=list)


def read_page_size(params: QueryDict, errors: list[str]) -> int:
    raw = params.get("page_size")
    if raw is None:
        return PAGE
    if raw.isdigit() and 1 <= int(raw) <= MAX_PAGE_SIZE:
        return int(raw)
    errors.append(f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}; showing {PAGE} per page.")
    return PAGE


def read_cursor(
    raw: str | None, salt: str, filters: ListFilters, errors: list[str]
) -> tuple[list[Any], bool] | None:
    """The row key a cursor names and its direction (True: newer), or None for the first page.

    A cursor is signed with the list's path and its filters: one changed by hand, taken from
    another tenant's list or from other filters is refused, and the first page is shown instead.
    """
    if raw is None:
        return None
    try:
        data = signing.Signer(salt=salt).unsign_object(raw)
    except (signing.BadSignature, ValueError):
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("k"), list) and len(data["k"]) == len(KEY)):
        errors.append(
            "cursor is not a page of this list (the link was changed or cut); showing the first page."
        )
        return None
    if data.get("f") != list(filters.params().values()):
        errors.append("cursor belongs to other filters; showing the first page of these.")
        return None
    return data["k"], bool(data.get("b"))


def list_page(request: HttpRequest, rows: QuerySet[Instance], filters: ListFilters) -> ListPage:
    """Cut one page out of ``rows`` (newest first) at the request's cursor, with one query.

    Keyset paging as the API does it (core.pagination): a cursor names the (created, id) of
    the row it starts after, so a page costs one range read of the index at any depth, and no
    row is shown twice or skipped when instances are created or deleted between pages.
    """
    errors: list[str] = []
    size = read_page_size(request.GET, errors)
    salt = SALT.format(request.path)
    position = read_cursor(request.GET.get("cursor"), salt, filters, errors)
    newer = position is not None and position[1]
    names = list(KEY)
    if position is not None:
        rows = rows.filter(beyond(names, position[0], lower=not newer))
    found = list(rows.order_by(*(n if newer else f"-{n}" for n in names))[: size + 1])
    more = len(found) > size
    found = found[:size]
    if newer:
        found.reverse()

    def cursor(row: Instance, back: bool) -> str:
        key = [encode(row.created), row.pk]
        return signing.Signer(salt=salt).sign_object(
            {"k": key, "b": back, "f": list(filters.params().values())}
        )

    # Going older: an older page exists when the read found one row more, a newer one always
    # (the page started at a cursor). Going newer: the other way round.
    has_older = more if not newer else True
    has_newer = position is not None if not newer else more
    return ListPage(
        rows=found,
        first=position is None,
        newer=cursor(found[0], True) if has_newer and found else None,
        older=cursor(found[-1], False) if has_older and found else None,
        newest=newer and not more,
        errors=errors,
    )


@login_required
@require_GET
def instance_list(request: HttpRequest, tenant: str) -> HttpResponse:
    """The tenant's instances in pages, filtered by state, kind and name; states follow the live stream.

    A bad cursor or page size answers 400 with the first page and a message naming the parameter.
    """
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    filters = ListFilters.of(request.GET)
    page = list_page(request, filters.apply(instances_of(obj)), filters)
    links = filters.params()
    if "page_size" in request.GET and not any(e.startswith("page_size") for e in page.errors):
        links["page_size"] = request.GET["page_size"]
    if page.newest:
        # Walked back to the newest rows: the first page is where they live (and new ones appear).
        return redirect(f"{request.path}?{urlencode(links)}")
    counts = dict(
        Instance.objects.for_tenant(obj)
        .exclude(state=InstanceState.DELETED)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    context = {
        "tenant": obj,
        "role": role,
        "can_act": role.at_least(Role.MEMBER),
        "instances": page.rows,
        "page": page,
        "first_url": f"{request.path}?{urlencode(links)}",
        "newer_url": f"{request.path}?{urlencode(links | {'cursor': page.newer})}" if page.newer else None,
        "older_url": f"{request.path}?{urlencode(links | {'cursor': page.older})}" if page.older else None,
        "filters": filters.params(),
        "filter_query": urlencode(filters.params()),
        "page_size": links.get("page_size", ""),  # kept by the filter form
        "state_choices": STATE_FILTERS,
        "kind_choices": InstanceKind.choices,
        "counts": counts,
    }
    return render(request, "compute/instances/list.html", context, status=400 if page.errors else 200)


@login_required
@require_GET
def instance_row(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    """One row of the list, for an instance the page learnt of from the live stream.

    The list's filters come along: an instance they leave out answers 204 (no row to show).
    """
    obj, _role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = get_object_or_404(instances_of(obj), uuid=pk)
    if not ListFilters.of(request.GET).apply(instances_of(obj)).filter(pk=instance.pk).exists():
        return HttpResponse(status=204)
    return render(request, "compute/instances/_row.html", {"tenant": obj, "i": instance})


def detail_context(tenant: Tenant, role: Role, instance: Instance) -> dict[str, Any]:
    """Everything one instance's page shows: its settings, operations, placement and snapshots."""

    placement = PlacementDecision.objects.for_tenant(tenant).filter(instance=instance).first()
    queue = None
    if instance.state == InstanceState.QUEUED:
        entries = list(
            QueueEntry.objects.for_tenant(tenant).filter(instance=instance, state=QueueState.WAITING)
        )
        queue = queue_statuses(entries).get(instance.pk)
    return {
        "tenant": tenant,
        "role": role,
        "can_act": role.at_least(Role.MEMBER),
        "instance": instance,
        "flavor_summary": flavor_summary(instance.flavor),
        "operations": list(
            Operation.objects.for_tenant(tenant).filter(instance=instance).order_by("-created")[:20]
        ),
        "snapshots": list(Snapshot.objects.for_tenant(tenant).filter(instance=instance)),
        "volumes": list(
            Volume.objects.for_tenant(tenant)
            .filter(instance=instance, deleted_at__isnull=True)
            .order_by("device")
        ),
        "floating_ip": FloatingIP.objects.for_tenant(tenant).filter(instance=instance).first(),
        "port_forwards": list(PortForward.objects.for_tenant(tenant).filter(instance=instance)),
        "forward_address": str(instance.host.address) if instance.host and instance.host.address else "",
        "placement": placement.record if placement else None,
        "placed_at": placement.created if placement else None,
        "queue": queue,
        "resize_form": ResizeForm(),
    }


@login_required
@require_GET
def instance_detail(request: HttpRequest, tenant: str, pk: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    instance = instance_of(obj, pk)
    return render(request, "compute/instances/detail.html", detail_context(obj, role, instance))
