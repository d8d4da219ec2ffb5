"""The steps every instance service shares: names, the idle lock, Operation rows and their queueing,
events after commit, deadlines, giving quota back, failing, asking for an admission pass.

They sit below the services that use them (instances, admission, resize, snapshots, the agent),
so those import them at module level without a cycle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from compute.models import Instance, InstanceState, Operation, OperationKind, OperationState
from core.errors import Conflict
from core.events import publish, publish_staff
from core.queues import CONTROL_QUEUE, send_task, send_task_after_commit
from scheduler.admission import queue_waiting
from security.audit import Actor
from tenants.models import QuotaClaim
from tenants.services.quotas import quota_release

logger = logging.getLogger(__name__)

NAME_RULE = "1-63 letters, digits or hyphens, starting with a letter"


def name_is_valid(name: str) -> bool:
    return (
        0 < len(name) <= 63
        and name[0].isalpha()
        and all(c.isalnum() or c == "-" for c in name)
        and name.isascii()
    )


def instance_event(instance: Instance, **extra: Any) -> None:
    """Tell the tenant's browsers about the instance's new state, after commit."""
    publish(
        instance.tenant_id,
        {
            "type": "instance.state",
            "instance": str(instance.uuid),
            "name": instance.name,
            "state": instance.state,
            "fault": instance.fault,
            **extra,
        },
    )


def drs_event(what: str, pk: int | None, **extra: Any) -> None:
    """Tell the staff's browsers (the DRS page) that a pass, a recommendation, a placement held for
    them or the settings changed, after commit."""
    publish_staff({"type": "drs", "what": what, "id": pk, **extra})


def operation_event(operation: Operation, instance_uuid: str | None = None) -> None:
    """Tell the tenant's browsers how an Operation stands (its state, step and progress), after commit."""
    publish(
        operation.tenant_id,
        {
            "type": "operation",
            "operation": str(operation.uuid),
            "instance": instance_uuid or str(operation.instance.uuid),
            "kind": operation.kind,
            "state": operation.state,
            "step": operation.step,
            "progress": operation.progress,
            "error": operation.error[:500],
        },
    )


def deadline() -> datetime:
    return timezone.now() + timedelta(seconds=settings.NUBIS_TRANSIENT_DEADLINE)


def operation_enqueue(operation: Operation) -> None:
    """After commit, hand the Operation to its host's agent (nothing while it has no host).

    The committed row is the promise; this send is only its first delivery. If the broker is
    down, or the message is lost, the outbox's dispatcher (compute.services.outbox) sends it again.
    """
    queue = operation.instance.host.queue if operation.instance.host else None
    if queue is None:
        return
    transaction.on_commit(OperationSend(operation.pk, queue))


def redispatch_wait(dispatches: int) -> timedelta:
    """How long a sent operation may stay unclaimed before it is sent again: NUBIS_DISPATCH_GRACE
    after the first send, doubling with each send after it, at most a minute."""
    grace = settings.NUBIS_DISPATCH_GRACE
    return timedelta(seconds=min(grace * 2 ** max(dispatches - 1, 0), max(60, grace)))


def operation_send(op_id: int, queue: str, dispatches: int = 0) -> bool:
    """Send the Operation to ``queue`` now and record the delivery on its row; False (recorded,
    for the dispatcher to try again next round) when the broker refused it."""
    now = timezone.now()
    try:
        send_task("compute.run_operation", queue=queue, args=(op_id,))
    except Exception as exc:  # kombu's OperationalError, a Redis or socket error
        logger.warning("operation %s not sent to %s (the broker failed: %s)", op_id, queue, exc)
        fields: dict[str, Any] = {
            "dispatch_error": f"{type(exc).__name__}: {exc}"[:300],
            "dispatch_after": now + timedelta(seconds=settings.NUBIS_DISPATCH_SECONDS),
        }
        sent = False
    else:
        fields = {
            "dispatches": F("dispatches") + 1,
            "dispatched_at": now,
            "dispatch_error": "",
            "dispatch_after": now + redispatch_wait(dispatches + 1),
        }
        sent = True
    try:
        Operation.objects.unscoped().filter(pk=op_id, state=OperationState.PENDING).update(**fields)
    except DatabaseError as exc:  # the dispatcher re-reads the row; nothing here is the promise
        logger.warning("operation %s: its delivery was not recorded: %s", op_id, exc)
    return sent


@dataclass(frozen=True)
class OperationSend:
    """The on-commit first delivery of an Operation (tests can read what it sends, and where)."""

    operation_id: int
    queue: str

    def __call__(self) -> None:
        operation_send(self.operation_id, self.queue)


def operation_record(
    instance: Instance,
    kind: str,
    actor: Actor,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Operation:
    operation = Operation.objects.create(
        tenant=instance.tenant,
        instance=instance,
        kind=kind,
        params=params or {},
        requested_by_id=actor.user_id,
        idempotency_key=idempotency_key,
        dispatch_after=timezone.now() + redispatch_wait(1),
    )
    operation_event(operation, str(instance.uuid))
    return operation


def operation_finish(operation: Operation, state: str, error: str = "") -> None:
    """Record how an Operation ended."""
    operation.state = state
    operation.error = error[:4000]
    operation.progress = 100 if state == OperationState.SUCCEEDED else operation.progress
    operation.finished = timezone.now()
    operation.save(update_fields=["state", "error", "progress", "finished"])
    operation_event(operation)


def instance_lock_idle(instance: Instance) -> Instance:
    """Lock the instance row; refuse if another operation on it has not finished yet."""
    locked = Instance.objects.for_tenant(instance.tenant_id).select_for_update().get(pk=instance.pk)
    busy = (
        Operation.objects.for_tenant(instance.tenant_id)
        .filter(instance=locked, state__in=[OperationState.PENDING, OperationState.RUNNING])
        .first()
    )
    if busy is not None:
        raise Conflict("state", "busy", f"the instance is busy with a {busy.kind} operation ({busy.uuid})")
    return locked


def release_claims(instance: Instance, reason: str) -> int:
    """Give back every quota claim the instance holds."""
    released = 0
    for claim in QuotaClaim.objects.for_tenant(instance.tenant_id).filter(
        holder_type__model="instance", holder_id=str(instance.pk), released_at__isnull=True
    ):
        released += int(quota_release(claim, reason))
    return released


def instance_fail(instance: Instance, fault: str) -> None:
    """Put the instance in error with its fault recorded, and give its quota back."""
    instance.state = InstanceState.ERROR
    instance.fault = fault[:4000]
    instance.fault_at = timezone.now()
    instance.state_deadline = None
    instance.save(update_fields=["state", "fault", "fault_at", "state_deadline", "updated"])
    release_claims(instance, f"error: {fault[:150]}")
    instance_event(instance)
    if instance.host_id is not None:
        admission_kick()


def _pending_creates(instance: Instance) -> Any:
    return Operation.objects.for_tenant(instance.tenant_id).filter(
        instance=instance, kind=OperationKind.CREATE, state=OperationState.PENDING
    )


def create_release(instance: Instance) -> None:
    """A waiting instance has its host (admitted from the queue, or placed by staff): it is
    scheduled, and its create Operation goes to the host's agent after commit."""
    instance.state = InstanceState.SCHEDULED
    instance.state_deadline = deadline()
    instance.save(update_fields=["state", "state_deadline", "updated"])
    instance_event(instance, host=instance.host.name if instance.host else "")
    for operation in _pending_creates(instance):
        operation_enqueue(operation)


def create_abandon(instance: Instance, reason: str) -> None:
    """A waiting instance will not be made (deleted, refused, given up): its create Operation fails."""
    for operation in _pending_creates(instance):
        operation_finish(operation, OperationState.FAILED, reason)


def admission_kick() -> None:
    """After commit, ask for an admission pass soon if anything waits (capacity was just released)."""
    if not queue_waiting():
        return
    send_task_after_commit("compute.admission_run", queue=CONTROL_QUEUE, expires=60)
