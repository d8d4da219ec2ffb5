"""Host registration, capability records and heartbeats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute.models import Host, HostState
from core.errors import Conflict
from security.audit import Actor, audit_log

if TYPE_CHECKING:
    from scheduler.engine import HostRow


@transaction.atomic
def host_register(*, name: str, uri: str, facts: Mapping[str, Any]) -> Host:
    """Create or refresh the host row with what the agent found (the fields of its driver's HostFacts,
    as a dict); a host that was down comes back enabled."""
    now = timezone.now()
    host, _created = Host.objects.select_for_update().get_or_create(name=name, defaults={"uri": uri})
    for key, value in facts.items():
        setattr(host, key, value)
    host.uri = uri
    host.probed_at = now
    host.heartbeat_at = now
    if host.state == HostState.DOWN:
        host.state = HostState.ENABLED
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
    Host.objects.filter(name=name, state=HostState.DOWN).update(state=HostState.ENABLED)
    return found


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
def host_maintenance_set(*, actor: Actor, host: Host, on: bool) -> Host:
    """Put a host into maintenance (placement skips it) or take it out again, and record who did.

    The state changes under the host's row lock. A ``down`` host is refused either way: it comes
    back by its agent's heartbeat, not by an operator. Taking a host out of maintenance enables
    it; a ``disabled`` host is not in maintenance, so ending maintenance on it is refused too. The
    change is an update of the state alone, as heartbeats are: the host's ``version`` (which makes
    the scheduler re-read its capacity) stays.
    """
    locked = Host.objects.select_for_update().get(pk=host.pk)
    before = locked.state
    if before == HostState.DOWN:
        raise Conflict(
            "state", "down", f"host {locked.name} is down; it comes back when its agent's heartbeat resumes"
        )
    if not on and before == HostState.DISABLED:
        raise Conflict("state", "disabled", f"host {locked.name} is disabled, not in maintenance")
    after = HostState.MAINTENANCE if on else HostState.ENABLED
    if before != after:
        Host.objects.filter(pk=locked.pk).update(state=after)
        locked.state = after
    audit_log(
        actor=actor,
        action="host.maintenance",
        target=locked,
        detail={"on": on, "from": before, "to": after, "changed": before != after},
    )
    return locked
