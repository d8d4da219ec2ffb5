"""DRS manual mode's initial placement: a new instance whose chosen host is in manual mode waits
for staff to place it.

vSphere DRS in manual mode recommends a host at power-on and lets the administrator pick; Nubis
does the same for creates (and for requests the admission queue admits):

- ``instance_place_or_hold`` decides as always (scheduler.services.decide). When DRS is on and
  the best host's automation level is manual (the cluster's, or its aggregates' strictest), the
  instance claims nothing: it waits in state ``awaiting`` with a ``DrsPlacement`` that keeps the
  decision (its best host, its candidates and why). Its quota stays held; no host's room is.
- Staff place it (``drs_place``) on the recommended host or another one: the filters check that
  host again, under its row lock, and its create goes to that host's agent. Or they refuse it
  (``drs_place_reject``): it fails with their reason, its quota given back.
- One not placed within ``DrsSettings.placement_timeout_seconds`` fails with that reason
  (``drs_placement_expire``, from the periodic DRS task); deleting one withdraws it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from compute.models import Host, Instance, InstanceState
from compute.services.lifecycle import (
    create_abandon,
    create_release,
    drs_event,
    instance_event,
    instance_fail,
)
from compute.services.placement import group_lock, placement_claim
from core.errors import Conflict, ServiceError
from scheduler.drs import MANUAL
from scheduler.drs.read import host_automation
from scheduler.models import DrsPlacement, DrsSettings, PlacementState
from scheduler.services import NoValidHost, Placement, decide, placement_record
from security.audit import Actor, audit_log

logger = logging.getLogger(__name__)


def held_for_staff(host_id: int, settings: DrsSettings) -> bool:
    """Whether a new instance that would go on ``host_id`` waits for staff (DRS on, and manual there)."""
    if not settings.enabled:
        return False
    return host_automation([host_id], settings.automation)[host_id] == MANUAL


def instance_place_or_hold(
    instance: Instance, hosts: Any = None, held: frozenset[int] = frozenset()
) -> Host | None:
    """Place ``instance`` as compute.services.placement.instance_place does (NoValidHost when no host
    can take it), unless its best host is in DRS manual mode: then it waits for staff (None)."""
    group_lock(instance)
    placement = decide(instance, hosts, held)
    settings = DrsSettings.current()
    if held_for_staff(placement.candidates[0], settings):
        _hold(instance, placement, settings.placement_timeout_seconds)
        return None
    return placement_claim(instance, placement)


def _hold(instance: Instance, placement: Placement, timeout: int) -> DrsPlacement:
    target = Host.objects.get(pk=placement.candidates[0])
    now = timezone.now()
    why = f"DRS is in manual mode on {target.name}: staff place new instances (recommended: {target.name})"
    record = {**placement.record, "held": why}
    held = DrsPlacement.objects.create(
        instance=instance,
        target=target,
        explanation=record,
        created=now,
        deadline=now + timedelta(seconds=timeout),
    )
    placement_record(instance, None, {**record, "host": ""})
    instance.state = InstanceState.AWAITING
    instance.state_deadline = None
    instance.save(update_fields=["state", "state_deadline", "updated"])
    instance_event(instance)
    drs_event("placement", held.pk, state=held.state)
    return held


def _locked(placement: DrsPlacement) -> tuple[DrsPlacement, Instance]:
    """The placement and its instance, locked (the instance first, as its delete does); Conflict
    unless it still waits."""
    instance = Instance.objects.unscoped().select_for_update().get(pk=placement.instance_id)
    rec = DrsPlacement.objects.select_for_update().select_related("target").get(pk=placement.pk)
    if rec.state != PlacementState.WAITING:
        raise Conflict("state", "state", f"the placement is {rec.state}; only a waiting one can be decided")
    if instance.state != InstanceState.AWAITING:  # never left waiting by another path; said clearly
        raise Conflict("state", "state", f"{instance.name} is {instance.state}, not waiting for a host")
    return rec, instance


def drs_place(
    *, actor: Actor, placement: DrsPlacement, host: Host | None = None, user: Any = None
) -> DrsPlacement:
    """Staff place a waiting instance on ``host`` (default: the recommended one). The filters check
    that host again (capacity, affinity, aggregates, maintenance) and its room is claimed under its
    row lock; ServiceError on ``host`` says why it cannot take the instance, and nothing changes."""
    with transaction.atomic():
        rec, instance = _locked(placement)
        chosen = host or rec.target
        group_lock(instance)
        try:
            got = placement_claim(instance, decide(instance, Host.objects.filter(pk=chosen.pk)))
        except NoValidHost as exc:
            raise ServiceError("host", "fits", f"{chosen.name} cannot take {instance.name}: {exc}") from None
        rec.state, rec.host, rec.decided_by = PlacementState.PLACED, got, user
        rec.save(update_fields=["state", "host", "decided_by", "updated"])
        create_release(instance)
        drs_event("placement", rec.pk, state=rec.state)
        audit_log(
            actor=actor,
            action="drs.place",
            target=instance,
            detail={"placement": rec.pk, "host": got.name, "recommended": rec.target.name},
        )
    logger.info("DRS placement %s: %s placed on %s", rec.pk, instance.name, got.name)
    return rec


def host_named(name: str) -> Host | None:
    """The real host a staff member named for a placement (None for no name: the recommended one)."""
    name = name.strip()
    if not name:
        return None
    host = Host.objects.filter(name=name, simulated=False).first()
    if host is None:
        raise ServiceError("host", "exists", f"host: no host named {name!r}")
    return host


def drs_place_all(*, actor: Actor, user: Any = None) -> tuple[int, list[str]]:
    """Staff place every waiting instance on its recommended host, oldest first. Returns how many
    were placed and, for each that could not be, why (it keeps waiting)."""
    placed, errors = 0, []
    for rec in DrsPlacement.objects.filter(state=PlacementState.WAITING).order_by("created", "pk"):
        try:
            drs_place(actor=actor, placement=rec, user=user)
        except ServiceError as exc:  # a Conflict too
            errors.append(exc.message)
        else:
            placed += 1
    return placed, errors


def _end(rec: DrsPlacement, instance: Instance, state: str, reason: str) -> None:
    """The instance will not be placed: its placement ends, its create and the instance fail."""
    rec.state, rec.reason = state, reason
    rec.save(update_fields=["state", "reason", "decided_by", "updated"])
    create_abandon(instance, reason)
    instance_fail(instance, reason)
    drs_event("placement", rec.pk, state=state)


def drs_place_reject(*, actor: Actor, placement: DrsPlacement, reason: str, user: Any = None) -> DrsPlacement:
    """Staff refuse a waiting instance: it fails with their reason, and its quota is given back."""
    reason = reason.strip()
    if not reason:
        raise ServiceError(
            "reason", "required", "reason: say why the instance is refused (its owner reads it)"
        )
    with transaction.atomic():
        rec, instance = _locked(placement)
        rec.decided_by = user
        _end(rec, instance, PlacementState.REJECTED, f"refused by staff: {reason[:500]}")
        audit_log(
            actor=actor,
            action="drs.place_reject",
            target=instance,
            detail={"placement": rec.pk, "reason": reason},
        )
    return rec


def drs_placement_expire(now: datetime | None = None) -> int:
    """Fail the instances staff did not place in time (the periodic DRS task); returns how many."""
    now = now or timezone.now()
    expired = 0
    late = DrsPlacement.objects.filter(state=PlacementState.WAITING, deadline__lt=now)
    for pk, instance_id in late.values_list("pk", "instance_id"):
        with transaction.atomic():
            instance = Instance.objects.unscoped().select_for_update().get(pk=instance_id)
            rec = DrsPlacement.objects.select_for_update().filter(pk=pk, state=PlacementState.WAITING).first()
            if rec is None:
                continue
            waited = int((rec.deadline - rec.created).total_seconds())
            why = f"not placed by staff within {waited} s (DRS manual mode)"
            _end(rec, instance, PlacementState.EXPIRED, why)
            audit_log(
                actor=Actor.system("drs"),
                action="drs.place_expire",
                target=instance,
                detail={"placement": rec.pk},
            )
            expired += 1
    return expired


def placement_withdraw(instance: Instance, reason: str) -> None:
    """The waiting instance is deleted: its placement ends and its create fails (inside the delete)."""
    withdrawn = DrsPlacement.objects.filter(instance=instance, state=PlacementState.WAITING)
    for pk in withdrawn.values_list("pk", flat=True):
        drs_event("placement", pk, state=PlacementState.CANCELLED)
    withdrawn.update(state=PlacementState.CANCELLED, reason=reason, updated=timezone.now())
    create_abandon(instance, reason)
