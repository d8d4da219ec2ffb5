"""Snapshots of VMs: create, revert, delete; each one counts against the tenant's snapshot quota."""

from __future__ import annotations

from django.db import transaction

from compute.models import Instance, InstanceKind, InstanceState, Operation, OperationKind, Snapshot
from compute.services.lifecycle import (
    NAME_RULE,
    instance_lock_idle,
    name_is_valid,
    operation_enqueue,
    operation_record,
)
from core.errors import Conflict, ServiceError
from security.audit import Actor, audit_log
from tenants.models import QuotaClaim
from tenants.services.quotas import quota_claim, quota_release

SNAPSHOT_STATES = (InstanceState.RUNNING, InstanceState.STOPPED)


@transaction.atomic
def snapshot_create(*, actor: Actor, instance: Instance, name: str) -> Operation:
    """Snapshot the VM's disk (and memory, when it runs); counts against the snapshots quota."""
    locked = instance_lock_idle(instance)
    if locked.kind == InstanceKind.CONTAINER:
        raise Conflict("kind", "kind", "containers have no snapshots: their root is a read-only image")
    if locked.state not in SNAPSHOT_STATES:
        raise Conflict("state", "state", f"cannot snapshot an instance that is {locked.state}")
    if not name_is_valid(name):
        raise ServiceError("name", "name", f"invalid snapshot name {name!r}: {NAME_RULE}")
    if Snapshot.objects.for_tenant(locked.tenant_id).filter(instance=locked, name=name).exists():
        raise Conflict("name", "unique", f"{locked.name} already has a snapshot named {name!r}")
    snapshot = Snapshot.objects.create(tenant=locked.tenant, instance=locked, name=name)
    quota_claim(locked.tenant, {"snapshots": 1}, f"snapshot {locked.name}@{name}", holder=snapshot)
    operation = operation_record(
        locked, OperationKind.SNAPSHOT, actor, params={"snapshot": snapshot.pk, "name": name}
    )
    audit_log(actor=actor, action="snapshot.create", target=snapshot, tenant=locked.tenant)
    operation_enqueue(operation)
    return operation


@transaction.atomic
def snapshot_revert(*, actor: Actor, snapshot: Snapshot) -> Operation:
    locked = instance_lock_idle(snapshot.instance)
    if locked.state not in SNAPSHOT_STATES:
        raise Conflict("state", "state", f"cannot revert an instance that is {locked.state}")
    operation = operation_record(
        locked, OperationKind.REVERT, actor, params={"snapshot": snapshot.pk, "name": snapshot.name}
    )
    audit_log(actor=actor, action="snapshot.revert", target=snapshot, tenant=locked.tenant)
    operation_enqueue(operation)
    return operation


@transaction.atomic
def snapshot_delete(*, actor: Actor, snapshot: Snapshot) -> Operation:
    locked = instance_lock_idle(snapshot.instance)
    operation = operation_record(
        locked, OperationKind.DELETE_SNAPSHOT, actor, params={"snapshot": snapshot.pk, "name": snapshot.name}
    )
    audit_log(actor=actor, action="snapshot.delete", target=snapshot, tenant=locked.tenant)
    operation_enqueue(operation)
    return operation


def snapshot_forget(snapshot: Snapshot, reason: str) -> None:
    """Drop the snapshot's row and give back its quota claim."""
    for claim in QuotaClaim.objects.for_tenant(snapshot.tenant_id).filter(
        holder_type__model="snapshot", holder_id=str(snapshot.pk), released_at__isnull=True
    ):
        quota_release(claim, reason)
    snapshot.delete()
