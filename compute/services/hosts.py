"""Host registration, capability records and heartbeats."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute.drivers.base import HostFacts
from compute.models import Host, HostState


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
