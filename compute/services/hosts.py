"""Host registration, capability records and heartbeats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute.drivers.base import HostFacts
from compute.models import Host, HostState

if TYPE_CHECKING:
    from scheduler.engine import HostRow


@transaction.atomic
def host_register(*, name: str, uri: str, facts: HostFacts) -> Host:
    """Create or refresh the host row with what the agent found; a host that was down comes back enabled."""
    now = timezone.now()
    host, _created = Host.objects.select_for_update().get_or_create(name=name, defaults={"uri": uri})
    for key, value in asdict(facts).items():
        setattr(host, key, value)
    host.uri = uri
    host.probed_at = now
    host.heartbeat_at = now
    if host.state == HostState.DOWN:
        host.state = HostState.ENABLED
    host.save()
    return host


def host_heartbeat(name: str) -> bool:
    """Record that the host's agent is alive (a host marked down comes back); False if not registered."""
    now = timezone.now()
    found = bool(Host.objects.filter(name=name).update(heartbeat_at=now))
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
