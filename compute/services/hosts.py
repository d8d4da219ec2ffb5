"""Host registration, capability records and heartbeats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute.models import Host, HostState, Instance, InstanceState
from core.errors import Conflict
from security.audit import Actor, audit_log

if TYPE_CHECKING:
    from scheduler.engine import HostRow


def peer_links() -> dict[str, str | None]:
    """How the other hosts reach this one (settings NUBIS_HOST_ADDRESS, NUBIS_LIBVIRT_PEER_URI):
    the Host fields ``address`` and ``peer_uri``; none for a lone host without an address."""
    address = settings.NUBIS_HOST_ADDRESS
    if not address:
        return {"address": None, "peer_uri": ""}
    return {"address": address, "peer_uri": settings.NUBIS_LIBVIRT_PEER_URI.replace("{address}", address)}


@transaction.atomic
def host_register(*, name: str, uri: str, facts: Mapping[str, Any]) -> Host:
    """Create or refresh the host row with what the agent found (the fields of its driver's HostFacts,
    as a dict) and how its peers reach it; a host that was down comes back enabled."""
    now = timezone.now()
    host, _created = Host.objects.select_for_update().get_or_create(name=name, defaults={"uri": uri})
    for key, value in {**facts, **peer_links()}.items():
        setattr(host, key, value)
    host.uri = uri
    host.probed_at = now
    host.heartbeat_at = now
    if host.state == HostState.DOWN and host.fenced_at is None:
        host.state = HostState.ENABLED  # (a fenced host rejoins by host_unfence, after its cleanup)
    host.save()
    return host


def host_heartbeat(name: str, routes: list[dict[str, str]] | None = None) -> bool:
    """Record that the host's agent is alive (a host marked down comes back) and, when given, the
    routes and addresses on the host (the subnet allocator avoids them); False if not registered."""
    now = timezone.now()
    fields: dict[str, object] = {"heartbeat_at": now}
    if routes is not None:
        fields["routes"] = routes
    found = bool(Host.objects.filter(name=name).update(**fields))
    # A fenced host stays down: it rejoins by host_unfence, once its agent destroyed its guests.
    Host.objects.filter(name=name, state=HostState.DOWN, fenced_at__isnull=True).update(
        state=HostState.ENABLED
    )
    return found


def host_is_fenced(name: str) -> bool:
    """Whether the host was declared dead and fenced (compute.services.ha): it may run no guest."""
    return Host.objects.filter(name=name, fenced_at__isnull=False).exists()


def host_unfence(name: str) -> bool:
    """The fenced host's agent destroyed its guests: it rejoins, enabled. False if not fenced."""
    return bool(
        Host.objects.filter(name=name, fenced_at__isnull=False).update(
            fenced_at=None, state=HostState.ENABLED
        )
    )


def hosts_mark_down() -> list[str]:
    """Mark enabled hosts whose agent stopped beating as down; placement skips them."""
    cutoff = timezone.now() - timedelta(seconds=settings.NUBIS_HOST_HEARTBEAT_TIMEOUT)
    stale = Host.objects.filter(state=HostState.ENABLED, simulated=False).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True)
    )
    names = list(stale.values_list("name", flat=True))
    Host.objects.filter(name__in=names).update(state=HostState.DOWN)
    return names


@transaction.atomic
def simulated_hosts_register(*, hosts: Sequence[HostRow]) -> int:
    """Register a simulator trace's hosts as ``Host`` rows marked simulated; returns how many were new.

    Explicit registration is the only way a simulated host enters the database, and real placement
    never reads such rows (its host table takes ``simulated=False`` only). A name
    already held by a real host is refused; one held by a simulated host is kept as it is.
    ``hosts`` are the trace's simulated ones (``Trace.simulated_hosts()``), never recorded real ones.
    """
    existing: dict[str, bool] = {}
    for start in range(0, len(hosts), 5000):
        names = [h.name for h in hosts[start : start + 5000]]
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
        for h in hosts
        if h.name not in existing
    ]  # fmt: skip
    Host.objects.bulk_create(new, batch_size=1000)
    return len(new)


@transaction.atomic
def host_maintenance_set(*, actor: Actor, host: Host, on: bool, force: bool = False) -> Host:
    """Put a host into maintenance or take it out again, and record who did.

    Entering maintenance empties the host first (compute.services.evacuation): while instances are
    on it, it is ``entering_maintenance`` (placement skips it, its instances move a few at a time);
    an empty host, or ``force``, goes straight to ``maintenance`` (forced: what is left stays, as it
    is). Leaving is one action, from either state: the host is enabled (moves under way finish).

    The state changes under the host's row lock. A ``down`` host is refused either way: it comes
    back by its agent's heartbeat, not by an operator. A ``disabled`` host is not in maintenance,
    so ending maintenance on it is refused too. The change is an update of the state alone, as
    heartbeats are: the host's ``version`` (which makes the scheduler re-read its capacity) stays.
    """
    from compute.services.evacuation import evacuate_kick

    locked = Host.objects.select_for_update().get(pk=host.pk)
    before = locked.state
    if before == HostState.DOWN:
        raise Conflict(
            "state", "down", f"host {locked.name} is down; it comes back when its agent's heartbeat resumes"
        )
    if not on and before == HostState.DISABLED:
        raise Conflict("state", "disabled", f"host {locked.name} is disabled, not in maintenance")
    occupied = Instance.objects.unscoped().filter(host=locked).exclude(state=InstanceState.DELETED).exists()
    if not on:
        after = HostState.ENABLED
    elif force or not occupied or before == HostState.MAINTENANCE:
        after = HostState.MAINTENANCE
    else:
        after = HostState.ENTERING_MAINTENANCE
    if before != after:
        fields: dict[str, Any] = {"state": after}
        if after != HostState.ENTERING_MAINTENANCE:
            fields["evacuation"] = {}
        Host.objects.filter(pk=locked.pk).update(**fields)
        for key, value in fields.items():
            setattr(locked, key, value)
    if after == HostState.ENTERING_MAINTENANCE:
        evacuate_kick()
    audit_log(
        actor=actor,
        action="host.maintenance",
        target=locked,
        detail={"on": on, "force": force, "from": before, "to": after, "changed": before != after},
    )
    return locked
