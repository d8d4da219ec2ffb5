"""Maintenance mode empties a host: its VMs move live, its containers (and stopped VMs) cold, a few
at a time, through the normal migration (compute.services.migration) and placement.

A host entering maintenance (``HostState.ENTERING_MAINTENANCE``) gets no new placement. Each pass
(the control worker's ``compute.evacuate``, every few seconds, and right after each move ends)
starts moves until NUBIS_EVACUATE_PARALLEL are under way. An instance that cannot move (no host
has room, a strict server-group rule, an error state) is listed on the host with the reason: the
host stays entering maintenance until it is dealt with or the operator forces maintenance. Once
nothing is left on it, the host is in maintenance. ``Host.evacuation`` says how it stands.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compute.models import Host, HostState, Instance, InstanceState, Operation, OperationState
from compute.services.migration import MOVABLE, instance_migrate
from core.errors import Conflict, ServiceError
from core.queues import CONTROL_QUEUE, send_task_after_commit
from security.audit import Actor

logger = logging.getLogger(__name__)

EVACUATE_TASK = "compute.evacuate"


def evacuate_kick() -> None:
    """After commit, ask for an evacuation pass now (a host entered maintenance, a move ended)."""
    send_task_after_commit(EVACUATE_TASK, queue=CONTROL_QUEUE, expires=60)


def evacuate_all() -> dict[str, dict[str, Any]]:
    """One pass over every host entering maintenance."""
    return {host.name: evacuate(host) for host in Host.objects.filter(state=HostState.ENTERING_MAINTENANCE)}


def _busy(instance: Instance) -> bool:
    return (
        Operation.objects.unscoped()
        .filter(instance=instance, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .exists()
    )


def evacuate(host: Host) -> dict[str, Any]:
    """Start the next moves off ``host``; record how its evacuation stands; end it when empty."""
    actor = Actor.system("maintenance")
    live = Instance.objects.unscoped().filter(host=host).exclude(state=InstanceState.DELETED)
    moving = live.filter(state=InstanceState.MIGRATING).count()
    room = max(0, settings.NUBIS_EVACUATE_PARALLEL - moving)
    blocked: list[dict[str, str]] = []
    started: list[str] = []
    for instance in live.exclude(state=InstanceState.MIGRATING).order_by("-priority", "created", "pk"):
        if instance.state not in MOVABLE:
            if instance.state == InstanceState.ERROR:
                blocked.append(_blocker(instance, "in error: delete it, or force maintenance"))
            continue  # busy with another operation: its turn comes when that ends
        if room <= 0 or _busy(instance):
            continue
        try:
            instance_migrate(actor=actor, instance=instance, reason=f"maintenance of {host.name}")
        except (Conflict, ServiceError) as exc:
            blocked.append(_blocker(instance, exc.message))
            continue
        started.append(instance.name)
        room -= 1
    remaining = live.count()
    status = {
        "remaining": remaining,
        "moving": live.filter(state=InstanceState.MIGRATING).count(),
        "started": started,
        "blocked": blocked,
        "at": timezone.now().isoformat(),
    }
    with transaction.atomic():
        locked = Host.objects.select_for_update().get(pk=host.pk)
        if locked.state != HostState.ENTERING_MAINTENANCE:
            return status  # left maintenance (or was forced into it) meanwhile
        fields: dict[str, Any] = {"evacuation": status}
        if remaining == 0:
            fields["state"] = HostState.MAINTENANCE
            logger.info("maintenance: %s is empty and in maintenance", host.name)
        Host.objects.filter(pk=locked.pk).update(**fields)
    return status


def _blocker(instance: Instance, reason: str) -> dict[str, str]:
    return {"instance": str(instance.uuid), "name": instance.name, "reason": reason}
