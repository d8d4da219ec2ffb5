"""The admission queue's decisions applied: an instance joins or leaves the queue, is admitted
(placed, its create Operation handed to its host's agent; or held for staff to place it, in DRS
manual mode) or gives up (fails).

The scheduler keeps the queue and decides (scheduler.admission); the instance's state, its host
claim, its Operation and its events are changed here.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from compute.models import Instance, InstanceState
from compute.services.drs_placement import instance_place_or_hold
from compute.services.lifecycle import (
    admission_kick,
    create_abandon,
    create_release,
    instance_event,
    instance_fail,
)
from scheduler.admission import (
    GiveUp,
    queue_admitted,
    queue_dropped,
    queue_given_up,
    queue_join,
    queue_leave,
    queue_pass,
    queue_refused,
    queue_status,
)
from scheduler.models import QueueEntry
from scheduler.services import NoValidHost

log = logging.getLogger(__name__)


def admission_enqueue(instance: Instance, reason: str) -> QueueEntry:
    """Put an instance that found no room in the queue (inside its create transaction), and ask
    for a pass soon: its turn may have come."""
    entry = queue_join(instance, reason)
    instance.state = InstanceState.QUEUED
    instance.state_deadline = None
    instance.save(update_fields=["state", "state_deadline", "updated"])
    instance_event(instance, queue=queue_status(entry))
    admission_kick()
    return entry


def admission_cancel(instance: Instance, reason: str) -> None:
    """Take a queued instance out of the queue (its delete, its give-up); its create Operation fails."""
    queue_leave(instance, reason)
    create_abandon(instance, reason)


def admission_run(now: datetime | None = None, hosts: Any = None) -> list[str]:
    """One pass over the queue; returns the names of the admitted instances, in admission order.

    ``now`` is the clock the ordering uses (tests move it); ``hosts`` narrows placement, as in
    scheduler.services.decide. Each admission (and each give-up) is its own transaction.
    """
    now = now or timezone.now()
    admitted = queue_pass(now, lambda entry: _admit(entry, hosts, now), _give_up, hosts)
    names = [entry.instance.name for entry in admitted]
    if names:
        log.info("admission: admitted %s", ", ".join(names))
    return names


@transaction.atomic
def _admit(entry: QueueEntry, hosts: Any, now: datetime) -> bool:
    """Try to place one queued instance; on success it moves on to its host's agent."""
    instance = Instance.objects.for_tenant(entry.tenant_id).select_for_update().get(pk=entry.instance_id)
    if instance.state != InstanceState.QUEUED:
        queue_dropped(entry, now)
        return False
    try:
        # Its decision record stays, refused or not: it explains the wait.
        host = instance_place_or_hold(instance, hosts)
    except NoValidHost as exc:
        queue_refused(entry, str(exc))
        return False
    queue_admitted(entry, now)
    if host is not None:  # else its turn came, and now staff place it (DRS manual mode)
        create_release(instance)
    return True


@transaction.atomic
def _give_up(decision: GiveUp) -> None:
    instance = (
        Instance.objects.for_tenant(decision.tenant_id).select_for_update().get(pk=decision.instance_id)
    )
    admission_cancel(instance, decision.reason)
    queue_given_up(decision)
    if instance.state == InstanceState.QUEUED:
        instance_fail(instance, decision.reason)
