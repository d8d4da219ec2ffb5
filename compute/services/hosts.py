"""Host registration, capability records and heartbeats."""

from __future__ import annotations

from dataclasses import asdict

from django.db import transaction
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
    """Record that the host's agent is alive; False if the host is not registered."""
    return bool(Host.objects.filter(name=name).update(heartbeat_at=timezone.now()))
